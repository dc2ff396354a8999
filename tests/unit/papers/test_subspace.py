"""The subspace illusion paper (Makelov et al. 2023): IOI pairs, layer choice, Table 1
statistics, rank-1 edits and claims, on tiny random models and synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_repro.engine.hooks import cache_activations
from circuit_repro.engine.subspace import collect_at
from circuit_repro.papers.claims import CLAIM_COLUMNS, load_claims
from circuit_repro.papers.subspace import INTERVENTIONS, PAPER, SubspaceSettings
from circuit_repro.papers.subspace.claims import subspace_claims
from circuit_repro.papers.subspace.facts import (
    _edit_hooks,
    _top_tokens,
    facts_layers,
    rank_one_edits,
    run_facts,
    second_moment,
)
from circuit_repro.papers.subspace.ioi import (
    Site,
    SiteResult,
    SubspaceSetupError,
    build_pairs,
    choose_layers,
    fldd,
    run_ioi,
    table_one,
    vocabulary_split,
)
from circuit_repro.tasks import generate_task
from circuit_repro.tasks.base import read_records, write_jsonl


def test_training_and_test_vocabularies_are_disjoint(tiny_model):
    tokenizer = tiny_model("tiny-llama").tokenizer
    split = vocabulary_split(tokenizer, seed=0)
    for key in ("templates", "names", "places", "objects"):
        assert split["train"][key] and split["test"][key]
        assert not set(split["train"][key]) & set(split["test"][key]), key
    train = build_pairs(tokenizer, split["train"], 16, 0, "train")
    test = build_pairs(tokenizer, split["test"], 8, 1, "test")
    names = lambda pairs: {r["names"][k] for r in pairs.records for k in ("IO", "S")}  # noqa: E731
    assert not names(train) & names(test)
    assert not {r["template"] for r in train.records} & {r["template"] for r in test.records}


def test_pairs_swap_the_opening_names_and_target_the_subject(tiny_model):
    tokenizer = tiny_model("tiny-llama").tokenizer
    split = vocabulary_split(tokenizer, seed=0)
    train = build_pairs(tokenizer, split["train"], 16, 0, "train")
    # A quarter each of ABB->ABB, BAB->BAB, ABB->BAB, BAB->ABB.
    patterns = pd.Series(
        [(r["order"], bool(c)) for r, c in zip(train.records, train.cross, strict=True)]
    )
    assert patterns.value_counts().tolist() == [4, 4, 4, 4]
    for record, base, source, cross, target in zip(
        train.records, train.base, train.source, train.cross, train.target, strict=True
    ):
        roles = record["roles"]
        if not cross:
            assert source == base and target == train.io[train.records.index(record)]
            continue
        expected = list(base)
        expected[roles["IO"]], expected[roles["S1"]] = base[roles["S1"]], base[roles["IO"]]
        assert source == expected
        assert int(target) == tokenizer(record["wrong_answer"])["input_ids"][-1]
    test = build_pairs(tokenizer, split["test"], 8, 1, "test")
    assert test.cross.all()


def scan_table(resid, mlp):
    layers = range(len(resid))
    return pd.DataFrame(
        {
            "layer": [*layers, *layers],
            "site": ["resid"] * len(resid) + ["mlp"] * len(mlp),
            "fldd": [*resid, *mlp],
        }
    )


def test_choose_layers_takes_the_peak_and_the_nearest_quiet_earlier_layer():
    scan = scan_table([0, 0, 1, 3, 40, 90, 80, 2], [0, 0, 0, 1, -2, -5, 1, 0])
    assert choose_layers(scan, 8, SubspaceSettings()) == (5, 3)
    assert choose_layers(scan, 8, SubspaceSettings(layer=6, control_layer=1)) == (6, 1)
    # The last layer leaves no heads to read the feature: never chosen automatically.
    assert choose_layers(scan_table([0, 0, 5, 9], [0] * 4), 4, SubspaceSettings())[0] == 2
    # Two layers: the first is analysed and the second is the control.
    assert choose_layers(scan_table([3, 1], [0, 0]), 2, SubspaceSettings()) == (0, 1)
    with pytest.raises(SubspaceSetupError, match="subspace.layer"):
        choose_layers(scan, 8, SubspaceSettings(layer=7))
    with pytest.raises(SubspaceSetupError, match="control_layer"):
        choose_layers(scan, 8, SubspaceSettings(control_layer=5))


def synthetic_results(n=50, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.normal(3.0, 0.5, n)
    results = []
    for name, layer, shift in (("mlp", 4, 1.0), ("resid", 4, 3.5), ("control_mlp", 2, 0.1)):
        ld = {
            "full": clean - 0.1 * shift,
            "direction": clean - shift,
            "rowspace": clean - 0.3 * shift,
            "nullspace": clean.copy(),
            "placebo": clean - 0.01,
        }
        success = {k: (v < 0).astype(bool) for k, v in ld.items()}
        norms = dict.fromkeys(ld, 0.7)
        site = Site(name, layer, f"blocks.{layer}.x", torch.eye(3))
        results.append(SiteResult(site, torch.ones(3), (1.0,), norms, ld, success))
    return results, clean


def test_table_one_is_the_ratio_of_means_with_paired_contrasts():
    results, clean = synthetic_results()
    settings = SubspaceSettings(bootstrap_samples=200)
    table, contrasts = table_one(results, clean, np.ones(len(clean), bool), settings)
    assert list(table["site"].unique()) == ["clean", "mlp", "resid", "control_mlp"]
    mlp = table.set_index(["site", "intervention"]).loc["mlp"]
    assert list(mlp.index) == list(INTERVENTIONS)
    expected = 100 * (1 - results[0].ld["direction"].mean() / clean.mean())
    assert mlp.loc["direction", "fldd"] == pytest.approx(expected)
    assert mlp.loc["nullspace", "fldd"] == pytest.approx(0.0, abs=1e-12)
    assert fldd(np.array([-1.0]), np.array([2.0])) == pytest.approx(150.0)
    for row in table.itertuples():
        assert row.fldd_ci_low - 1e-9 <= row.fldd <= row.fldd_ci_high + 1e-9
    row = contrasts.set_index(["site", "contrast", "metric"]).loc[
        ("mlp", "direction_minus_rowspace", "fldd")
    ]
    assert row["value"] == pytest.approx(mlp.loc["direction", "fldd"] - mlp.loc["rowspace", "fldd"])
    assert row["ci_low"] > 0


def test_rank_one_edit_reproduces_the_patch_at_the_base_position(tiny_model):
    """The edit's key reads 1 on the base activation, so at that position the MLP's
    output changes exactly as the 1-D patch changes it; the random edit has the norm."""
    loaded = tiny_model("tiny-llama")
    layer = 1
    hook = f"blocks.{layer}.mlp.hook_post"
    w_out = loaded.bridge.blocks[layer].mlp.W_out.detach()
    tokens = [[3, 9, 12, 40, 7], [5, 11, 13, 41, 8]]
    sources = [[3, 9, 20, 40, 7], [5, 11, 22, 41, 8]]
    base_h = collect_at(loaded, tokens, [2, 2], [hook])[hook]
    source_h = collect_at(loaded, sources, [2, 2], [hook])[hook]
    directions = torch.nn.functional.normalize(torch.randn(2, w_out.shape[0]), dim=-1)
    moment = second_moment(loaded, tokens + sources, hook)
    keys, values, random_values = rank_one_edits(directions, base_h, source_h, w_out, moment, 0)
    torch.testing.assert_close(
        (keys.double() * base_h.double()).sum(-1),
        torch.ones(2, dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    patched = base_h + ((source_h - base_h) * directions).sum(-1, keepdim=True) * directions
    torch.testing.assert_close(values, (patched - base_h) @ w_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(random_values.norm(dim=-1), values.norm(dim=-1))
    out_hook = f"blocks.{layer}.mlp.out.hook_out"
    device = loaded.hf_model.device
    with torch.no_grad():
        for i, ids in enumerate(tokens):
            batch = torch.tensor([ids], device=device)
            with cache_activations(loaded.bridge, [out_hook]) as plain:
                loaded.hf_model(batch)
            hooks = _edit_hooks(layer, keys, values, [i])([0])
            from circuit_repro.engine.hooks import with_hooks

            with (
                with_hooks(loaded.bridge, hooks),
                cache_activations(loaded.bridge, [out_hook]) as edited,
            ):
                loaded.hf_model(batch)
            change = edited[out_hook][0, 2] - plain[out_hook][0, 2]
            torch.testing.assert_close(change, values[i], atol=1e-4, rtol=1e-4)
    assert _top_tokens(loaded, tokens).shape == (2,)


def test_facts_layers_are_fractions_of_depth():
    assert facts_layers(30, [0.25, 0.5, 0.251]) == [7, 14]
    assert facts_layers(18, [0.0, 1.0]) == [0, 17]


def test_whole_experiment_runs_on_a_tiny_model(tiny_model, tmp_path):
    """End to end on a random model (numbers meaningless): every table has its columns,
    and the kernel part leaves the logit difference unchanged."""
    loaded = tiny_model("tiny-llama")
    settings = SubspaceSettings(
        train_pairs=12, test_pairs=8, epochs=1, reader_heads=2, bootstrap_samples=100
    )
    result = run_ioi(loaded, settings)
    assert set(result.scan["site"]) == {"resid", "mlp"}
    assert result.readers["chosen"].sum() == 2
    null = result.table.set_index(["site", "intervention"]).loc[("mlp", "nullspace")]
    assert null["fldd"] == pytest.approx(0.0, abs=0.5)
    assert {"mlp", "mlp.rowspace", "mlp.nullspace", "resid"} <= set(result.directions)
    records = generate_task("facts", loaded.tokenizer, {"n_prompts": 12}, seed=0)
    path = tmp_path / "facts.jsonl"
    write_jsonl(records, path)
    per_pair, summary = run_facts(
        loaded,
        read_records(path),
        SubspaceSettings(facts_pairs=4, facts_steps=2, bootstrap_samples=100),
    )
    # A random model knows no facts: the tables are empty and the claims say so.
    assert per_pair.empty and summary.empty
    claims = subspace_claims("tiny-llama", result.table, result.contrasts, summary, {})
    assert list(claims.columns) == CLAIM_COLUMNS
    facts = claims.set_index("claim_id").loc[["fact_edit_held_out", "fact_patch_vs_rowspace"]]
    assert (facts["verdict"] == "not reproduced").all()


def test_claims_from_synthetic_tables():
    results, clean = synthetic_results()
    table, contrasts = table_one(
        results, clean, np.ones(len(clean), bool), SubspaceSettings(bootstrap_samples=200)
    )
    summary = pd.DataFrame(
        [
            {
                "layer": 7,
                "measure": m,
                "value": v,
                "ci_low": v - 0.1,
                "ci_high": v + 0.1,
                "n_pairs": 20,
            }
            for m, v in (
                ("direction", 0.6),
                ("rowspace", 0.05),
                ("nullspace", 0.0),
                ("full", 0.0),
                ("edit", 0.6),
                ("held_out_edit", 0.3),
                ("held_out_random_edit", 0.0),
                ("held_out_edit_changed", 0.3),
                ("held_out_random_edit_changed", 0.0),
                ("edit_minus_random_edit", 0.3),
                ("direction_minus_rowspace", 0.55),
            )
        ]
    )
    baselines = {
        "ioi": {
            "task": "ioi",
            "accuracy": 0.9,
            "accuracy_ci_low": 0.85,
            "chance": 0.5,
            "near_chance": False,
        },
        "facts": {
            "task": "facts",
            "accuracy": 0.3,
            "accuracy_ci_low": 0.2,
            "chance": 0.25,
            "near_chance": True,
        },
    }
    claims = subspace_claims("m", table, contrasts, summary, baselines).set_index("claim_id")
    assert set(claims.index) == set(load_claims(PAPER.claims_file))
    assert claims.loc["illusion", "verdict"] == "reproduced"
    assert claims.loc["kernel_inert", "verdict"] == "reproduced"
    assert claims.loc["mlp_direction_vs_random", "verdict"] == "reproduced"
    # Facts at chance: mechanism claims are gated.
    assert claims.loc["fact_edit_held_out", "verdict"] == "inconclusive: model at chance"
    assert "layer 7" in claims.loc["fact_edit_held_out", "note"]


def test_records_roundtrip_for_facts(tiny_model):
    """The facts records the paper reads carry relation, subject and template."""
    records = generate_task("facts", tiny_model("tiny-llama").tokenizer, {"n_prompts": 4}, seed=0)
    typed = records[0]
    assert {"relation", "subject", "template"} <= set(typed.fields)


def test_fact_directions_lower_their_objective(tiny_model):
    """The per-pair search lowers logit(a) - logit(b) under the 1-D patch, pair by
    pair, from its seeded random start (prompts of two shapes, patched mid-prompt)."""
    from circuit_repro.engine.subspace import PositionRuns, patch_along, position_hook
    from circuit_repro.papers.subspace.facts import FactPairs, fit_fact_directions

    loaded = tiny_model("tiny-llama")
    base = [[3, 9, 12, 40, 7, 8], [5, 11, 13, 41, 8, 9], [4, 10, 14, 42, 9], [6, 12, 15, 43, 10]]
    source = [[3, 9, 20, 40, 7, 8], [5, 11, 22, 41, 8, 9], [4, 10, 23, 42, 9], [6, 12, 24, 43, 10]]
    patch, end = [2] * 4, [len(ids) - 1 for ids in base]
    pairs = FactPairs(
        records=[None] * 4, base=base, source=source, subject_last=patch, end=end,
        answer=torch.tensor([50, 51, 52, 53]), other=torch.tensor([60, 61, 62, 63]),
        held_out=[[]] * 4,
    )  # fmt: skip
    hook = "blocks.0.mlp.hook_post"
    acts = collect_at(loaded, source, patch, [hook])[hook]
    runs = PositionRuns(loaded, base, patch, end, start_layer=0)
    token_ids = torch.stack([pairs.answer, pairs.other], dim=1)

    def objective(directions):
        hooks = [
            position_hook(hook, lambda at, rows: patch_along(at, acts[rows], directions[rows]))
        ]
        logits = runs.all_logits(hooks, token_ids)
        return logits[:, 0] - logits[:, 1]

    start = torch.nn.functional.normalize(
        torch.randn(4, acts.shape[-1], generator=torch.Generator().manual_seed(0)), dim=-1
    )
    learned = fit_fact_directions(runs, hook, acts, pairs, steps=30, lr=0.1, seed=0)
    torch.testing.assert_close(learned.norm(dim=-1), torch.ones(4))
    assert (objective(learned) < objective(start) - 1e-3).all()
