"""Activation and path patching: the fast path against plain loops and TransformerLens."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching

from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import (
    Component,
    all_components,
    cache_activations,
    has_kind,
    patch,
    with_hooks,
)
from circuit_repro.engine.metrics import LogitDiffMetric
from circuit_repro.engine.patching import (
    PatchingRuns,
    naive_patching_sweep,
    patching_sweep,
    runs_from_records,
    shared_prefix_length,
)
from circuit_repro.engine.path_patching import (
    cache_runs,
    naive_path_patching,
    path_patching,
    plan_path_patching,
    step_one,
    step_two,
)
from circuit_repro.models.load import load_bridge
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.tasks import generate_task


def ioi_runs(loaded, n_prompts=5, seed=0):
    """Corrupt (S2 -> IO flipped) as base, clean as source: clean -> corrupt patching."""
    records = generate_task("ioi", loaded.tokenizer, {"n_prompts": n_prompts}, seed=seed)
    return runs_from_records(loaded.tokenizer, records)


@pytest.fixture(scope="module")
def setup(tiny_model_id, tiny_model):
    loaded = tiny_model(tiny_model_id)
    runs, metric = ioi_runs(loaded, n_prompts=8)
    return loaded, runs, metric


def clean_metric(loaded, runs, metric, tokens):
    with torch.no_grad():
        logits = logits_at(loaded, tokens, runs.read_positions)
    return metric(logits, torch.arange(runs.n_prompts)).mean().item()


def sweep_components(loaded, runs):
    """A mix of every kind, all positions and single positions."""
    bridge = loaded.bridge
    seq = runs.base_tokens.shape[1]
    components = (
        all_components(bridge, "head")
        + all_components(bridge, "head", [1, seq - 1])
        + all_components(bridge, "resid_pre", [None, 0, 3])
        + all_components(bridge, "q", [seq - 2])
        + all_components(bridge, "k")
        + all_components(bridge, "v")
        + all_components(bridge, "attn_out")
        + all_components(bridge, "mlp_out", [None, 2])
        + (all_components(bridge, "resid_mid") if has_kind(bridge, "resid_mid") else [])
        + all_components(bridge, "resid_post", [4])
        + all_components(bridge, "pattern", [seq - 1])
        + all_components(bridge, "neuron")[::23]
    )
    return components


def test_fast_sweep_equals_naive_loop(setup):
    loaded, runs, metric = setup
    components = sweep_components(loaded, runs)
    # A small token budget forces several chunks per layer.
    fast = patching_sweep(loaded, runs, components, metric, token_budget=300, progress=False)
    naive = naive_patching_sweep(loaded, runs, components, metric)
    assert list(fast["layer"]) == list(naive["layer"])
    difference = (fast["value"] - naive["value"]).abs().max()
    assert difference < 1e-5, difference
    # The sweep is not degenerate: patches move the metric by different amounts.
    assert naive["value"].std() > 1e-4


def scattered_runs(loaded, n_prompts=4, seq=12, seed=0):
    """Random prompts whose source differs from the base at a few scattered positions,
    different in each prompt, read at different positions (so some differences lie
    after a prompt's read position, where they cannot reach the metric)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = min(500, loaded.hf_model.config.vocab_size)
    base = torch.randint(0, vocab, (n_prompts, seq), generator=generator)
    source = base.clone()
    changed = {0: [3], 1: [5, 9], 2: [4, 11], 3: [7]}
    for prompt, positions in changed.items():
        for position in positions:
            source[prompt, position] = (base[prompt, position] + 1) % vocab
    read = torch.tensor([seq - 1, seq - 1, 8, seq - 2])
    return PatchingRuns(base, source, read)


def by_position_components(loaded, seq):
    bridge = loaded.bridge
    return (
        all_components(bridge, "head", range(seq))
        + all_components(bridge, "resid_pre", [None, *range(seq)])
        + all_components(bridge, "mlp_out", range(seq))
        + all_components(bridge, "k", [2, 6])
        + all_components(bridge, "pattern", [4, 10])
        + all_components(bridge, "neuron", [3, 8])[::17]
    )


def test_skipped_noop_patches_equal_the_naive_loop_exactly(setup):
    """Scattered differences: a patch is skipped where source and base agree (before
    the first differing token of every prompt; the embedding wherever the token is the
    same; after each prompt's read position), and its value is bitwise the naive loop's
    (a full forward pass with the patch). Patches that run agree within 1e-5."""
    loaded, _, _ = setup
    runs = scattered_runs(loaded)
    metric = LogitDiffMetric(torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))
    seq = runs.base_tokens.shape[1]
    components = by_position_components(loaded, seq)
    fast = patching_sweep(loaded, runs, components, metric, token_budget=200, progress=False)
    naive = naive_patching_sweep(loaded, runs, components, metric)
    skipped = fast["skipped"].to_numpy()
    assert 0 < skipped.sum() < len(components)
    assert (fast["value"][skipped] == naive["value"][skipped]).all()
    ran = ~skipped
    assert (fast["value"][ran] - naive["value"][ran]).abs().max() < 1e-5
    # The rule, spelled out: nothing differs before position 3 (the first change, in
    # prompt 0); the embedding differs only where a token does, at or before the read
    # position (prompt 2 reads at 8, so its change at 11 is invisible).
    first = 3
    for row, component in zip(fast.itertuples(), components, strict=True):
        if component.position is not None and component.position < first:
            assert row.skipped, component
        if component.kind == "resid_pre" and component.layer == 0:
            visible = {3, 5, 9, 4, 7} if component.position is not None else {first}
            expected = (
                component.position not in visible if component.position is not None else False
            )
            assert row.skipped == expected, component
    # The patches that run move the metric by different amounts (not a degenerate sweep).
    assert naive["value"][ran].std() > 0


def test_identical_prompts_skip_every_patch_and_equal_the_naive_loop(setup):
    loaded, _, _ = setup
    runs = scattered_runs(loaded)
    same = PatchingRuns(runs.base_tokens, runs.base_tokens, runs.read_positions)
    metric = LogitDiffMetric(torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))
    components = by_position_components(loaded, runs.base_tokens.shape[1])[::5]
    fast = patching_sweep(loaded, same, components, metric, progress=False)
    naive = naive_patching_sweep(loaded, same, components, metric)
    assert fast["skipped"].all()
    assert (fast["value"] == naive["value"]).all()


def test_shared_prefix_is_where_source_and_base_first_differ():
    base = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 0]])
    source = torch.tensor([[5, 6, 3, 8, 9], [5, 6, 7, 2, 4]])
    read = torch.tensor([4, 3])
    assert shared_prefix_length(PatchingRuns(base, source, read)) == 2
    assert shared_prefix_length(PatchingRuns(base, base, read)) == 5
    # Differences hidden by the attention mask (padding) do not count.
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    tail = source.clone()
    tail[:, 2] = base[:, 2]
    tail[1, 4] = 7
    assert shared_prefix_length(PatchingRuns(base, tail, read, attention_mask=mask)) == 3


def test_ioi_runs_share_a_prefix_so_all_position_patches_start_late(setup):
    """The fast sweep's all-positions patches run from the first differing token; the
    equality tests above therefore cover that path."""
    _, runs, _ = setup
    assert 0 < shared_prefix_length(runs) < int(runs.read_positions.min())


def test_patching_a_run_with_itself_changes_nothing(setup):
    loaded, runs, metric = setup
    same = PatchingRuns(runs.base_tokens, runs.base_tokens, runs.read_positions)
    components = sweep_components(loaded, runs)
    values = patching_sweep(loaded, same, components, metric, progress=False)["value"]
    unpatched = clean_metric(loaded, runs, metric, runs.base_tokens)
    assert (values - unpatched).abs().max() < 1e-5


def test_patching_the_whole_residual_stream_restores_the_source(setup):
    """Replacing resid_pre (all positions) at any layer, or the last resid_post,
    reproduces the source run's metric exactly."""
    loaded, runs, metric = setup
    bridge = loaded.bridge
    components = all_components(bridge, "resid_pre") + [
        Component("resid_post", bridge.cfg.n_layers - 1)
    ]
    values = patching_sweep(loaded, runs, components, metric, progress=False)["value"]
    source = clean_metric(loaded, runs, metric, runs.source_tokens)
    base = clean_metric(loaded, runs, metric, runs.base_tokens)
    assert abs(source - base) > 1e-4
    assert (values - source).abs().max() < 1e-5


def test_patching_every_head_and_mlp_with_the_source_embedding_gives_source_logits(setup):
    loaded, runs, metric = setup
    bridge = loaded.bridge
    everything = (
        [Component("resid_pre", 0)]
        + all_components(bridge, "head")
        + all_components(bridge, "mlp_out")
    )
    with cache_activations(bridge, sorted({c.hook_name for c in everything})) as source:
        source_logits = bridge(runs.source_tokens)
    with torch.no_grad(), patch(bridge, everything, source):
        patched_logits = bridge(runs.base_tokens)
    torch.testing.assert_close(patched_logits, source_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox"])
def test_sweeps_equal_transformer_lens_patching(model_id):
    loaded = load_bridge(ensure_prepared(model_id))
    runs, metric = ioi_runs(loaded, n_prompts=4, seed=1)
    bridge = loaded.bridge
    n_layers, n_heads, seq = bridge.cfg.n_layers, bridge.cfg.n_heads, runs.base_tokens.shape[1]
    rows = torch.arange(runs.n_prompts)

    def tl_metric(logits):
        return metric(logits[rows, runs.read_positions], rows).mean()

    _, clean_cache = bridge.run_with_cache(runs.source_tokens)
    cases = [
        (
            tl_patching.get_act_patch_attn_head_out_all_pos,
            all_components(bridge, "head"),
            (n_layers, n_heads),
        ),
        (
            tl_patching.get_act_patch_attn_head_out_by_pos,
            [
                Component("head", layer, h, p)
                for layer in range(n_layers)
                for p in range(seq)
                for h in range(n_heads)
            ],
            (n_layers, seq, n_heads),
        ),
        (
            tl_patching.get_act_patch_resid_pre,
            all_components(bridge, "resid_pre", range(seq)),
            (n_layers, seq),
        ),
    ]
    for tl_function, components, shape in cases:
        expected = tl_function(bridge, runs.base_tokens, clean_cache, tl_metric)
        ours = patching_sweep(loaded, runs, components, metric, progress=False)
        values = torch.tensor(ours["value"].to_numpy()).view(shape)
        assert expected.shape == shape
        torch.testing.assert_close(values, expected.double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_gqa_kv_patch_moves_exactly_the_sharing_query_heads(model_id):
    """Patching K/V head g changes the patterns and outputs of its query heads only."""
    loaded = load_bridge(ensure_prepared(model_id))
    runs, _ = ioi_runs(loaded, n_prompts=3)
    bridge = loaded.bridge
    n_heads = bridge.cfg.n_heads
    n_kv = bridge.cfg.n_key_value_heads
    assert n_kv < n_heads
    group_size = n_heads // n_kv
    layer = 1
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z"]
    with cache_activations(bridge, ["blocks.1.attn.hook_k", "blocks.1.attn.hook_v"]) as source:
        bridge(runs.source_tokens)
    with cache_activations(bridge, names) as plain:
        bridge(runs.base_tokens)
    for kind, moved_name in (("k", names[0]), ("v", names[1])):
        for group in range(n_kv):
            with (
                patch(bridge, [Component(kind, layer, group)], source),
                cache_activations(bridge, names) as patched,
            ):
                bridge(runs.base_tokens)
            head_axis = 1 if "pattern" in moved_name else 2
            for head in range(n_heads):
                delta = (patched[moved_name] - plain[moved_name]).select(head_axis, head)
                in_group = head // group_size == group
                assert (delta.abs().max() > 1e-7) == in_group, (kind, group, head)


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-neox", "tiny-gemma3"])
def test_path_patching_equals_freezing_by_hand(model_id):
    loaded = load_bridge(ensure_prepared(model_id))
    runs, metric = ioi_runs(loaded, n_prompts=4)
    # Corrupt -> clean direction, as in Merullo et al.: base = clean, source = corrupt.
    runs = PatchingRuns(runs.source_tokens, runs.base_tokens, runs.read_positions)
    bridge = loaded.bridge
    # The suffix after the shared prefix is computed alone: check that path too.
    shared, end = shared_prefix_length(runs), int(runs.read_positions.min())
    assert 0 < shared < end
    # Senders in every layer: those at or after a receiver's layer cannot reach it.
    senders = all_components(bridge, "head") + [Component("head", 0, 1, position=shared + 1)]
    n_kv = getattr(bridge.cfg, "n_key_value_heads", None) or bridge.cfg.n_heads
    receiver_sets = [
        None,
        [Component("q", 1, h) for h in range(bridge.cfg.n_heads)],
        [Component("k", 1, 0), Component("v", 1, n_kv - 1)],
        [Component("q", 1, 0, position=end), Component("k", 1, 0, position=shared + 1)],
    ]
    for receivers in receiver_sets:
        fast = path_patching(
            loaded, runs, senders, receivers, metric, token_budget=60, progress=False
        )
        for sender, value in zip(senders, fast["value"], strict=True):
            expected = naive_path_patching(loaded, runs, sender, receivers, metric)
            assert value == pytest.approx(expected, abs=1e-5), (sender, receivers)


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def test_path_patching_at_the_read_position_equals_freezing_by_hand(model_id):
    """positions="read" (Merullo et al.'s code): senders patched and receivers put back
    at each prompt's read position alone, checked against the full-sequence loop."""
    loaded = load_bridge(ensure_prepared(model_id))
    runs, metric = ioi_runs(loaded, n_prompts=4)
    runs = PatchingRuns(runs.source_tokens, runs.base_tokens, runs.read_positions)
    bridge = loaded.bridge
    senders = [c for c in all_components(bridge, "head") if c.layer == 0]
    receivers = [Component("q", 1, 0), Component("k", 1, 0), Component("v", 1, 0)]
    fast = path_patching(
        loaded,
        runs,
        senders,
        receivers,
        metric,
        token_budget=60,
        progress=False,
        positions="read",
    )
    everywhere = path_patching(loaded, runs, senders, receivers, metric, progress=False)
    # One cache of the base and source runs serves both modes, with the same numbers.
    cached = cache_runs(loaded, runs)
    for positions, expected, budget in (("read", fast, 60), ("all", everywhere, None)):
        again = path_patching(
            loaded,
            runs,
            senders,
            receivers,
            metric,
            progress=False,
            positions=positions,
            cached=cached,
            **({"token_budget": budget} if budget else {}),
        )
        assert torch.equal(
            torch.tensor(again["value"].to_numpy()), torch.tensor(expected["value"].to_numpy())
        )
    with pytest.raises(ValueError, match="made for other runs"):
        other = PatchingRuns(runs.base_tokens, runs.source_tokens, runs.read_positions)
        path_patching(loaded, other, senders, receivers, metric, cached=cached)
    for sender, value in zip(senders, fast["value"], strict=True):
        expected = naive_path_patching(loaded, runs, sender, receivers, metric, "read")
        assert value == pytest.approx(expected, abs=1e-5), sender
    # Different paths: the mode must change something.
    assert (fast["value"] - everywhere["value"]).abs().max() > 1e-6


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-neox"])
def test_into_the_final_residual_both_position_modes_agree(model_id):
    """Stage 1 of the reuse circuit: patching a sender at every position or at the read
    position alone gives the same effect into the final residual stream, since its
    earlier positions reach the read position only through frozen heads. Checked on the
    hand-frozen loop, which computes every position whatever the mode."""
    loaded = load_bridge(ensure_prepared(model_id))
    runs, metric = ioi_runs(loaded, n_prompts=4)
    runs = PatchingRuns(runs.source_tokens, runs.base_tokens, runs.read_positions)
    senders = all_components(loaded.bridge, "head")
    for sender in senders[:: max(1, len(senders) // 6)]:
        everywhere = naive_path_patching(loaded, runs, sender, None, metric, "all")
        at_read = naive_path_patching(loaded, runs, sender, None, metric, "read")
        assert at_read == pytest.approx(everywhere, abs=1e-5), sender
    fast_all = path_patching(loaded, runs, senders, None, metric, progress=False)
    fast_read = path_patching(loaded, runs, senders, None, metric, progress=False, positions="read")
    assert torch.equal(
        torch.tensor(fast_all["value"].to_numpy()), torch.tensor(fast_read["value"].to_numpy())
    )
    with pytest.raises(ValueError, match="positions must be one of"):
        path_patching(loaded, runs, senders, None, metric, positions="final")


def test_path_patching_is_its_plan_and_two_steps():
    """The plan and the two steps, called by hand, give path_patching's numbers exactly;
    step 1 records one [pairs, heads, d_head] input per sender and receiver hook."""
    loaded = load_bridge(ensure_prepared("tiny-llama"))
    runs, metric = ioi_runs(loaded, n_prompts=4)
    runs = PatchingRuns(runs.source_tokens, runs.base_tokens, runs.read_positions)
    senders = all_components(loaded.bridge, "head")[:6]  # layer 0 and layer 1 heads
    receivers = [Component("q", 1, 0), Component("v", 1, loaded.n_kv_heads - 1)]
    plan = plan_path_patching(loaded, runs, senders, receivers, token_budget=60)
    assert plan.n_pairs > runs.n_prompts  # rows from the first differing token on
    assert plan.prefix_cache is not None
    assert all(len({senders[i].layer for i in chunk}) == 1 for chunk in plan.chunks)
    assert sorted(i for chunk in plan.chunks for i in chunk) == list(range(len(senders)))
    recorded = step_one(loaded, plan, metric, progress=False)
    assert set(recorded) == {"blocks.1.attn.hook_q", "blocks.1.attn.hook_v"}
    for name, heads in (("q", loaded.n_heads), ("v", loaded.n_kv_heads)):
        for value in recorded[f"blocks.1.attn.hook_{name}"]:
            assert value.shape == (plan.n_pairs, heads, loaded.d_head)
    by_steps = step_two(loaded, plan, recorded, metric, progress=False)
    table = path_patching(loaded, runs, senders, receivers, metric, token_budget=60, progress=False)
    assert torch.equal(by_steps.mean(dim=1), torch.tensor(table["value"].to_numpy()))

    plan = plan_path_patching(loaded, runs, senders, None)
    direct = step_one(loaded, plan, metric, progress=False)  # [senders, prompts]
    table = path_patching(loaded, runs, senders, None, metric, progress=False)
    assert torch.equal(direct.mean(dim=1), torch.tensor(table["value"].to_numpy()))
    with pytest.raises(ValueError, match="step 2 needs receivers"):
        step_two(loaded, plan, {}, metric)


def test_path_patching_with_all_receivers_downstream_equals_activation_patching():
    """Frozen heads aside, a last-layer sender's only path is the final residual stream,
    so path patching to the residual equals patching the head (no downstream heads)."""
    loaded = load_bridge(ensure_prepared("tiny-llama"))
    runs, metric = ioi_runs(loaded, n_prompts=4)
    last = loaded.bridge.cfg.n_layers - 1
    senders = [c for c in all_components(loaded.bridge, "head") if c.layer == last]
    paths = path_patching(loaded, runs, senders, None, metric, progress=False)
    direct = patching_sweep(loaded, runs, senders, metric, progress=False)
    assert (paths["value"] - direct["value"]).abs().max() < 1e-5


def test_patching_runs_reject_misaligned_prompts():
    with pytest.raises(ValueError, match="aligned prompts"):
        PatchingRuns(
            torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long), [4, 4]
        )


def test_path_patching_rejects_non_head_senders():
    loaded = load_bridge(ensure_prepared("tiny-llama"))
    runs, metric = ioi_runs(loaded, n_prompts=2)
    with pytest.raises(ValueError, match="senders must be heads"):
        path_patching(loaded, runs, [Component("mlp_out", 0)], None, metric, progress=False)
    with pytest.raises(ValueError, match="receivers must be q, k or v"):
        path_patching(loaded, runs, [Component("head", 0, 0)], [Component("mlp_out", 1)], metric)


def test_hooks_are_removed_after_the_context(setup):
    loaded, runs, _ = setup
    with torch.no_grad():
        before = loaded.bridge(runs.base_tokens)
        with with_hooks(loaded.bridge, [("blocks.0.hook_resid_pre", lambda a, hook: a * 0)]):
            during = loaded.bridge(runs.base_tokens)
        after = loaded.bridge(runs.base_tokens)
    assert not torch.allclose(before, during)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
