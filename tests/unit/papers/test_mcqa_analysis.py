"""The multiple-choice analyses (circuit_repro.papers.mcqa.analysis) on tiny random
models: DLA adds up to the letters' logit difference, a head planted to attend to the
correct label is found, and compression keeps all of a head at full rank and none of it
with its values at rank 0."""

from __future__ import annotations

import math

import pytest
import torch

from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, with_hooks
from circuit_repro.papers.mcqa.analysis import (
    compression_curve,
    compression_ranks,
    label_attention,
    label_positions,
    letter_dla,
    letter_ids,
    prompt_tokens,
    smallest_rank,
)
from circuit_repro.tasks.mcqa import generate_mcqa
from circuit_repro.tasks.records import TaskRecord


@pytest.fixture(scope="module")
def llama(tiny_model):
    return tiny_model("tiny-llama")


def records_for(loaded, n=8):
    return [TaskRecord.from_dict(r) for r in generate_mcqa(loaded.tokenizer, n, seed=0)]


def test_letter_dla_adds_up_to_the_letters_logit_difference(tiny_model, tiny_model_id):
    loaded = tiny_model(tiny_model_id)
    records = records_for(loaded)
    table, per_prompt, total, n_top = letter_dla(loaded, records)
    tokens, read = prompt_tokens(loaded.tokenizer, records)
    answers, others = letter_ids(loaded.tokenizer, records)
    logits = logits_at(loaded, tokens, read).double()
    expected = logits.gather(1, answers[:, None])[:, 0] - logits.gather(1, others).mean(1)
    torch.testing.assert_close(per_prompt.sum(1), expected, rtol=0, atol=1e-4)
    assert 0 <= n_top <= len(table) - 1


def test_a_head_planted_on_the_correct_label_is_found(llama):
    records = records_for(llama)
    _, read = prompt_tokens(llama.tokenizer, records)
    targets = [label_positions(r)[r.fields["correct_position"]] for r in records]
    layer, head = 1, 2

    def plant(pattern, hook):  # [batch, head, query, key]
        pattern = pattern.clone()
        for row in range(pattern.shape[0]):
            prompt = plant.offset + row
            pattern[row, head, int(read[prompt])] = 0.0
            pattern[row, head, int(read[prompt]), targets[prompt]] = 1.0
        plant.offset += pattern.shape[0]
        return pattern

    plant.offset = 0
    name = Component("pattern", layer, 0).hook_name
    with with_hooks(llama.bridge, [(name, plant)]):
        table = label_attention(llama, records)
    planted = table.set_index(["layer", "head"]).loc[(layer, head)]
    assert planted["correct"] == pytest.approx(1.0)
    assert planted["other"] == pytest.approx(0.0)
    assert planted["top_is_correct"] == pytest.approx(1.0)
    others = table[(table["layer"] != layer) | (table["head"] != head)]
    assert (others["top_is_correct"] < 1.0).any()


def test_compression_keeps_all_at_full_rank_and_none_without_values(tiny_model):
    # GPT-2: one K/V head per query head (under grouped-query attention the values
    # belong to the whole group, and rank 0 silences every head of it).
    gpt2 = tiny_model("tiny-gpt2")
    records = records_for(gpt2)
    curve = compression_curve(gpt2, records, layer=1, head=0, sites=("v",))
    assert list(curve["rank"]) == compression_ranks(gpt2.d_head)
    diffs = curve["logit_diff"]
    assert diffs.iloc[-1] == pytest.approx(curve.attrs["clean_logit_diff"], abs=1e-4)
    assert diffs.iloc[0] == pytest.approx(curve.attrs["ablated_logit_diff"], abs=1e-4)
    assert curve.attrs["clean_logit_diff"] != pytest.approx(curve.attrs["ablated_logit_diff"])


def test_kept_share_and_smallest_rank():
    import pandas as pd

    from circuit_repro.papers.mcqa.analysis import _kept

    assert _kept(3.0, clean=4.0, ablated=2.0) == pytest.approx(0.5)
    assert math.isnan(_kept(3.0, clean=2.0, ablated=4.0))  # ablating does not hurt
    curve = pd.DataFrame({"rank": [0, 1, 2, 3], "kept": [0.0, 0.5, 0.92, 1.0]})
    assert smallest_rank(curve) == 2
    assert smallest_rank(curve, share=1.1) is None


def test_query_key_compression_at_full_rank_is_the_clean_head(llama):
    records = records_for(llama)
    curve = compression_curve(llama, records, layer=1, head=1, ranks=[1, llama.d_head])
    full = curve.set_index("rank").loc[llama.d_head]
    assert full["logit_diff"] == pytest.approx(curve.attrs["clean_logit_diff"], abs=1e-4)
    assert math.isnan(full["kept"]) or full["kept"] == pytest.approx(1.0, abs=1e-3)


def test_explained_variance_of_planted_groups():
    from circuit_repro.papers.mcqa.analysis import explained_variance

    generator = torch.Generator().manual_seed(0)
    groups = [i % 4 for i in range(400)]
    centres = torch.randn(4, 3, generator=generator) * 10
    points = centres[groups] + 0.01 * torch.randn(400, 3, generator=generator)
    assert explained_variance(points, groups) > 0.99
    unrelated = [i // 100 for i in range(400)]  # groups that cut across the centres
    assert explained_variance(points, unrelated) < 0.05


def test_mutated_records_keep_content_and_move_labels(llama):
    from circuit_repro.papers.mcqa.analysis import MUTATIONS, mutated

    for record in records_for(llama, 4):
        for name in MUTATIONS:
            variant = mutated(record, name)
            ids = llama.tokenizer(variant.prompt)["input_ids"]
            labels = [llama.tokenizer.decode([ids[p]]).strip() for p in label_positions(variant)]
            assert labels == [str(label) for label in variant.fields["labels"]]
            position = variant.fields["correct_position"]
            assert variant.answer.strip() == str(variant.fields["labels"][position])
            assert variant.fields["options"] == record.fields["options"]


def test_enumeration_test_separates_position_from_label_only_under_mutations(llama):
    from circuit_repro.papers.mcqa.analysis import enumeration_test

    table = enumeration_test(llama, records_for(llama, 8), layer=1, head=0, rank=3)
    assert list(table["labels"]) == ["clean", "random_letters", "numbers", "shuffled"]
    clean = table.iloc[0]
    assert clean["position"] == pytest.approx(clean["label"])  # the same grouping
    assert ((table[["position", "label"]] >= 0) & (table[["position", "label"]] <= 1)).all().all()
    shuffled = table.set_index("labels").loc["shuffled"]
    assert shuffled["position"] != pytest.approx(shuffled["label"])


def test_output_node_patching_scores_every_head_and_mlp(tiny_model, tiny_model_id):
    from circuit_repro.papers.mcqa.analysis import output_node_patching, top_heads

    loaded = tiny_model(tiny_model_id)
    table = output_node_patching(loaded, records_for(loaded, 6))
    assert (table["kind"] == "head").sum() == loaded.n_layers * loaded.n_heads
    assert (table["kind"] == "mlp_out").sum() == loaded.n_layers
    assert table["effect"].abs().max() > 0
    best = top_heads(table, 2)
    heads = table[table["kind"] == "head"]
    assert best[0] == tuple(heads.loc[heads["effect"].idxmax(), ["layer", "index"]].astype(int))


@torch.no_grad()
def test_output_node_patching_matches_a_plain_patch_of_one_head(llama):
    """The sweep's value for one head equals patching that head by hand, group by group."""
    from circuit_repro.engine.hooks import cache_activations, patch
    from circuit_repro.engine.patching import runs_from_records
    from circuit_repro.papers.mcqa.analysis import output_node_patching

    records = records_for(llama, 8)
    assert len({r.end for r in records}) > 1  # several length groups
    table = output_node_patching(llama, records)
    layer, head = 1, 1
    total = 0.0
    for end in sorted({r.end for r in records}):
        group = [r for r in records if r.end == end]
        runs, metric = runs_from_records(llama.tokenizer, group, "shuffled", "corrupt -> clean")
        component = Component("head", layer, head, position=end)
        with cache_activations(llama.bridge, [component.hook_name]) as source:
            logits_at(llama, runs.source_tokens, runs.read_positions)
        with patch(llama.bridge, [component], dict(source)):
            patched = logits_at(llama, runs.base_tokens, runs.read_positions)
        total += float(metric(patched, torch.arange(len(group))).sum())
    row = table[(table["kind"] == "head") & (table["layer"] == layer) & (table["index"] == head)]
    assert float(row["value"].iloc[0]) == pytest.approx(total / len(records), abs=1e-4)


@torch.no_grad()
def test_checkpoint_heads_reports_accuracy_and_attention_of_the_given_heads(llama):
    from circuit_repro.papers.mcqa.analysis import checkpoint_heads, letter_accuracy

    records = records_for(llama, 8)
    table = checkpoint_heads(llama, records, [(1, 0), (0, 2)], step=40)
    attention = label_attention(llama, records).set_index(["layer", "head"])
    assert list(zip(table["layer"], table["head"], strict=True)) == [(1, 0), (0, 2)]
    assert (table["step"] == 40).all()
    assert table["correct"].iloc[1] == pytest.approx(attention.loc[(0, 2), "correct"])
    hits = letter_accuracy(llama, records)
    assert table["accuracy"].iloc[0] == pytest.approx(hits.mean())
    # Accuracy from the full logits, as an independent check.
    tokens, read = prompt_tokens(llama.tokenizer, records)
    logits = logits_at(llama, tokens, read)
    picks = [
        max(r.candidates, key=lambda c: float(logits[i, llama.tokenizer(c)["input_ids"][-1]]))
        for i, r in enumerate(records)
    ]
    assert hits.tolist() == [p == r.answer for p, r in zip(picks, records, strict=True)]


def test_analyse_writes_every_table_for_the_top_heads(llama):
    from circuit_repro.papers.mcqa import McqaSettings
    from circuit_repro.papers.mcqa.analysis import MUTATIONS, analyse

    settings = McqaSettings(prompts=8, patching_prompts=4, top_heads=2)
    tables, summary = analyse(llama, records_for(llama, 12), settings)
    assert summary["n_prompts"] == 8 and len(summary["top_heads"]) == 2
    assert set(summary["smallest_rank"]) == set(summary["top_heads"])
    compression = tables["compression"]
    assert len(compression) == 2 * len(compression_ranks(llama.d_head))
    assert set(tables["mutations"]["labels"]) == {"clean", *MUTATIONS}
    assert len(tables["enumeration"]) == 2 * (1 + len(MUTATIONS))
    heads = {f"a{r.layer}.h{r.head}" for r in compression.itertuples()}
    assert heads == set(summary["top_heads"])
    assert summary["n_top_components"] <= summary["n_components"]
    # Per-prompt values for the claims' bootstraps.
    assert tables["dla_prompts"].shape == (8, len(tables["dla"]))
    torch.testing.assert_close(
        torch.tensor(tables["dla_prompts"].mean().to_numpy()),
        torch.tensor(tables["dla"]["dla"].to_numpy()),
    )
    assert len(tables["attention_prompts"]) == 2 * 8
    settings_seen = set(tables["compression_prompts"]["setting"])
    assert {"clean", "ablated", f"rank{llama.d_head}"} <= settings_seen
    assert len(tables["enumeration_points"]) == 2 * (1 + len(MUTATIONS)) * 8 * 4


def test_compression_ranks_cover_small_ranks_and_end_at_the_full_head():
    assert compression_ranks(64) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64]
    assert compression_ranks(4) == [0, 1, 2, 3, 4]
    assert compression_ranks(256)[-3:] == [64, 128, 256]
