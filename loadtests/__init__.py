"""Load tests and the benchmark harness (``python -m loadtests.bench``); see README.md."""
