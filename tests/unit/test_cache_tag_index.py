"""The tag index of the cache's store: small tuples become sets and back, and it always holds
exactly the (tag, key) pairs of the live entries (checked against a plain dict of sets)."""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_token_broker.cache.store import SMALL_TAG, Keys, _index_add, _index_discard

ops = st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"]), st.integers(0, 3 * SMALL_TAG)),
               max_size=400)


@given(ops)
@settings(max_examples=200, deadline=None)
def test_index_matches_a_dict_of_sets(steps: list[tuple[bool, str, int]]) -> None:
    index: dict[str, Keys] = {}
    model: dict[str, set[Hashable]] = {}
    for add, tag, key in steps:
        if add:
            _index_add(index, tag, key)
            model.setdefault(tag, set()).add(key)
        else:
            _index_discard(index, tag, key)
            if tag in model:
                model[tag].discard(key)
                if not model[tag]:
                    del model[tag]
        assert {t: set(keys) for t, keys in index.items()} == model
        for keys in index.values():
            assert keys  # no empty holder is kept
            if isinstance(keys, tuple):
                assert len(keys) <= SMALL_TAG and len(set(keys)) == len(keys)
            else:
                assert len(keys) > SMALL_TAG // 2


def test_few_keys_are_a_tuple_many_a_set() -> None:
    index: dict[str, Keys] = {}
    for key in range(2):
        _index_add(index, "agent:x", ("app", key))
    assert index["agent:x"] == (("app", 0), ("app", 1))
    for key in range(2, SMALL_TAG + 1):
        _index_add(index, "agent:x", ("app", key))
    assert isinstance(index["agent:x"], set) and len(index["agent:x"]) == SMALL_TAG + 1
    for key in range(SMALL_TAG + 1):
        _index_discard(index, "agent:x", ("app", key))
    assert index == {}
