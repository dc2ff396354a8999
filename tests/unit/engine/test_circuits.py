"""Size-matched random controls for head sets (circuit_repro.engine.circuits)."""

from __future__ import annotations

from collections import Counter

import pytest

from circuit_repro.engine.circuits import random_head_sets

GROUP = [(19, 2), (20, 0), (23, 3), (24, 4)]  # SmolLM2's reuse intervention heads


@pytest.mark.parametrize("match", ["layer", "any"])
def test_random_sets_match_the_group_size_and_avoid_its_heads(match):
    draws = random_head_sets(GROUP, n_layers=30, n_heads=9, n_draws=25, seed=3, match=match)
    assert len(draws) == 25
    for draw in draws:
        assert len(draw) == len(GROUP) == len(set(draw))
        assert not set(draw) & set(GROUP)
        assert all(0 <= layer < 30 and 0 <= head < 9 for layer, head in draw)
        assert draw == sorted(draw)
    assert len({tuple(draw) for draw in draws}) > 20  # draws differ


def test_layer_matched_sets_have_the_groups_layers_exactly():
    group = [(5, 0), (5, 1), (7, 3)]
    for draw in random_head_sets(group, n_layers=12, n_heads=4, n_draws=50, seed=0):
        assert Counter(layer for layer, _ in draw) == Counter({5: 2, 7: 1})


def test_random_sets_are_seeded():
    first = random_head_sets(GROUP, 30, 9, 20, seed=7)
    assert first == random_head_sets(GROUP, 30, 9, 20, seed=7)
    assert first != random_head_sets(GROUP, 30, 9, 20, seed=8)
    assert first != random_head_sets(GROUP, 30, 9, 20, seed=7, match="any")


def test_a_layer_without_enough_other_heads_is_a_clear_error():
    full_layer = [(2, h) for h in range(4)]
    with pytest.raises(ValueError, match="layer 2 has 0 heads outside the set.*match='any'"):
        random_head_sets(full_layer, n_layers=4, n_heads=4, n_draws=1)
    assert len(random_head_sets(full_layer, 4, 4, 1, match="any")[0]) == 4
