from broker.emulator.cli import main

raise SystemExit(main())
