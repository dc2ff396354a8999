"""The subspace illusion on the real default model: the position feature sits at the
final token in a band of layers whose MLPs do not carry it, and a short DAS run in such
an MLP already beats its row-space part while its kernel part does nothing."""

from __future__ import annotations

import pytest

from circuit_repro.engine.subspace import PositionRuns, collect_at
from circuit_repro.models.load import load_bridge
from circuit_repro.papers.subspace import SubspaceSettings
from circuit_repro.papers.subspace.ioi import (
    build_pairs,
    choose_layers,
    logit_difference,
    mlp_site,
    run_site,
    scan_layers,
    table_one,
    vocabulary_split,
)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_bridge(smollm2_dir)


@pytest.fixture(scope="module")
def pairs(smollm2):
    split = vocabulary_split(smollm2.tokenizer, seed=0)
    train = build_pairs(smollm2.tokenizer, split["train"], 48, 0, "train")
    test = build_pairs(smollm2.tokenizer, split["test"], 32, 1, "test")
    return train, test


def test_the_feature_arrives_at_the_final_token_where_the_mlp_does_not_carry_it(smollm2, pairs):
    train, _ = pairs
    scan = scan_layers(smollm2, train.subset(train.cross))
    layer, control = choose_layers(scan, smollm2.n_layers, SubspaceSettings())
    by_site = {site: rows.set_index("layer")["fldd"] for site, rows in scan.groupby("site")}
    assert by_site["resid"][layer] > 60  # the whole residual stream flips most answers
    assert abs(by_site["mlp"][layer]) < 20  # its MLP alone does not (the paper's MLP8)
    assert by_site["resid"].iloc[:5].abs().max() < 5  # early layers: not there yet
    assert control < layer and abs(by_site["resid"][control]) < 0.1 * by_site["resid"][layer]


def test_a_short_das_run_shows_the_illusion(smollm2, pairs):
    """Five epochs on 48 pairs at the analysed MLP: the direction's FLDD exceeds its
    row-space part's, and the kernel part leaves the logit difference unchanged."""
    train, test = pairs
    layer = 22  # the default run's choice for SmolLM2 (scan above)
    site = mlp_site(smollm2, "mlp", layer)
    train_runs = PositionRuns(smollm2, train.base, train.end, train.end, layer)
    test_runs = PositionRuns(smollm2, test.base, test.end, test.end, layer)
    settings = SubspaceSettings(epochs=5, bootstrap_samples=200)
    train_source = collect_at(smollm2, train.source, train.end, [site.hook])
    test_source = collect_at(smollm2, test.source, test.end, [site.hook])
    result = run_site(site, train_runs, test_runs, train_source, test_source, train, test, settings)
    clean = test_runs.all_logits()
    clean_ld = logit_difference(clean, test)
    table, contrasts = table_one(
        [result], clean_ld, (clean.argmax(-1) == test.io).numpy(), settings
    )
    fldd = table.set_index("intervention")["fldd"]
    assert abs(fldd["nullspace"]) < 0.5
    gap = contrasts.set_index(["contrast", "metric"]).loc[("direction_minus_rowspace", "fldd")]
    assert gap["ci_low"] > 0, (fldd, gap)
    assert fldd["direction"] > fldd["full"] + 5
