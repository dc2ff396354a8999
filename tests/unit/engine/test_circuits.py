"""Size-matched random controls for head and component sets (circuit_repro.engine.circuits)."""

from __future__ import annotations

from collections import Counter

import pytest

from circuit_repro.engine.circuits import random_component_sets, random_head_sets
from circuit_repro.engine.hooks import Component

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


DIMS = {"n_layers": 6, "n_heads": 4, "d_mlp": 16}
MIXED = [
    Component("head", 1, 0),
    Component("head", 1, 3),
    Component("head", 4, 2, position=5),
    Component("neuron", 2, 7),
    Component("neuron", 2, 9),
    Component("neuron", 5, 0),
    Component("mlp_out", 3),
    Component("mlp_out", 4),
]


def _profile(components):
    """What a matched control must reproduce: per kind, layer (for heads and neurons)
    and position, the count."""
    return Counter(
        (c.kind, c.layer if c.kind in ("head", "neuron") else None, c.position) for c in components
    )


def test_component_sets_match_kind_layer_and_position_exactly():
    draws = random_component_sets(MIXED, DIMS, n_draws=40, seed=2)
    assert len(draws) == 40
    for draw in draws:
        assert _profile(draw) == _profile(MIXED)
        assert len(set(draw)) == len(draw) and draw == sorted(draw)
        assert not set(draw) & set(MIXED)  # outside the circuit
        assert all(c.index < DIMS["d_mlp"] for c in draw if c.kind == "neuron")
        assert all(c.layer < DIMS["n_layers"] for c in draw)
    assert len({tuple(draw) for draw in draws}) > 30


def test_component_sets_are_seeded_and_empty_circuits_give_empty_sets():
    first = random_component_sets(MIXED, DIMS, 10, seed=5)
    assert first == random_component_sets(MIXED, DIMS, 10, seed=5)
    assert first != random_component_sets(MIXED, DIMS, 10, seed=6)
    assert random_component_sets([], DIMS, 3) == [[], [], []]


def test_a_crowded_layer_raises_or_draws_from_the_whole_layer():
    crowded = [Component("head", 0, h) for h in range(3)]  # 1 of 4 heads left outside
    with pytest.raises(ValueError, match="layer 0 has 1 heads outside the set"):
        random_component_sets(crowded, DIMS, 1)
    for draw in random_component_sets(crowded, DIMS, 10, crowded="whole_layer"):
        assert _profile(draw) == _profile(crowded)
    all_layers = [Component("mlp_out", layer) for layer in range(6)]
    with pytest.raises(ValueError, match="the model has 0 mlp_outs outside the set"):
        random_component_sets(all_layers, DIMS, 1, crowded="whole_layer")
