"""Benchmarks: ``python -m circuit_repro.bench.patching`` (``make bench``).

Measures, in one process on the current machine:

- the fp32 matmul ceiling (best GFLOP/s of square ``torch.matmul`` products), the
  number every other throughput is compared against;
- a plain forward pass of the model on a batch of IOI prompts: wall time and achieved
  GFLOP/s (FLOPs counted from the architecture, see :func:`forward_flops`);
- activation patching sweeps (all heads over all positions, heads x positions,
  resid_pre layers x positions), timed for three implementations on the same
  prompts: the naive one-forward-per-patch loop, TransformerLens's ``patching.py``
  and :func:`circuit_repro.engine.patching.patching_sweep`; their results are compared;
- attribution patching (AtP) over all heads, in units of forward passes.

The naive loop and TransformerLens cost one full forward pass per component whatever
the component, so by default they are timed on a seeded sample of each sweep's
components and their time for the whole sweep is extrapolated linearly (the table
says so); ``--full`` times everything. Results go to ``results/bench/*.json`` and a
table on stdout. Performance is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from circuit_repro.models.load import load_model
from circuit_repro.models.prepare import ensure_prepared
from circuit_repro.paths import REPO_ROOT
from circuit_repro.provenance import provenance_record, write_json
from circuit_repro.tasks.ioi import generate_ioi
from circuit_repro.tasks.records import TaskRecord


def best_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_ceiling_gflops(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 8) -> float:
    """Best fp32 GFLOP/s of ``n x n @ n x n`` products (2 n^3 FLOPs each).

    The best of several sizes and repeats: a transient load on the machine lowers a
    single measurement, never raises it. :func:`main` measures it again at the end and
    keeps the higher value.
    """
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        seconds = best_seconds(lambda a=a, b=b: a @ b, repeats=repeats)
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def forward_flops(model, batch: int, seq: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass of a decoder-only LM.

    Counts every linear layer (attention projections, MLP, the unembedding at every
    position) from the model's own modules, plus the two attention products (scores
    and weighted values, full ``seq x seq`` as eager attention computes them). Norms,
    activations and softmax are ignored (memory-bound and small).
    """
    from transformers.pytorch_utils import Conv1D

    config = model.config
    linear_weights = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D)
    )
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    attention = 2 * 2 * batch * n_heads * seq * seq * d_head * config.num_hidden_layers
    return 2 * batch * seq * linear_weights + attention


def patched_run_flops(
    model, n_prompts: int, seq: int, start_layer: int, first_position: int
) -> float:
    """FLOPs of one patched run of the fast path: blocks from ``start_layer`` on,
    positions from ``first_position`` on (earlier keys and values come from the cache),
    and the unembedding at one position per prompt."""
    from transformers.pytorch_utils import Conv1D

    config = model.config
    unembed = model.get_output_embeddings().weight.numel()
    block_weights = (
        sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D))
        - unembed
    ) / config.num_hidden_layers
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    suffix = seq - first_position
    per_block = (
        2 * n_prompts * suffix * block_weights + 4 * n_prompts * n_heads * suffix * seq * d_head
    )
    return (config.num_hidden_layers - start_layer) * per_block + 2 * n_prompts * unembed


def bench_forward(
    model_id: str, batch: int, repeats: int, device: str = "cpu", dtype: str = "float32"
) -> dict:
    """Wall time and achieved GFLOP/s of a plain forward pass on ``batch`` IOI prompts."""
    model, tokenizer = load_model(ensure_prepared(model_id), device, dtype)
    records = generate_ioi(tokenizer, n_prompts=batch, seed=0)
    inputs = tokenizer([r["prompt"] for r in records], return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    seq = inputs["input_ids"].shape[1]

    @torch.no_grad()
    def forward():
        logits = model(**inputs).logits
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return logits

    seconds = best_seconds(forward, repeats=repeats)
    flops = forward_flops(model, batch, seq)
    return {
        "model": model_id,
        "device": device,
        "dtype": dtype,
        "batch": batch,
        "seq_len": seq,
        "seconds": seconds,
        "gflop": flops / 1e9,
        "gflops_per_s": flops / seconds / 1e9,
    }


def ioi_bench_records(tokenizer, n_prompts: int, seed: int = 0) -> list[TaskRecord]:
    """``n_prompts`` IOI records of one template (ABBA and BABA), so that positions align
    across prompts and by-position sweeps and mean ablations compare like with like."""
    records = generate_ioi(tokenizer, n_prompts=n_prompts * 40, seed=seed)
    same_template = [r for r in records if r["template"] == records[0]["template"]]
    if len(same_template) < n_prompts:
        raise ValueError(f"only {len(same_template)} prompts of one template; ask for fewer")
    return [TaskRecord.from_dict(record) for record in same_template[:n_prompts]]


TL_SWEEPS = {
    "heads, all positions": (
        "head",
        False,
        "get_act_patch_attn_head_out_all_pos",
        ("layer", "head"),
    ),
    "heads x positions": (
        "head",
        True,
        "get_act_patch_attn_head_out_by_pos",
        ("layer", "pos", "head"),
    ),
    "resid_pre x positions": ("resid_pre", True, "get_act_patch_resid_pre", ("layer", "pos")),
}


def _tl_sample(loaded, runs, metric, function_name, axes, components):
    """TransformerLens patching.py on ``components`` only (its index_df argument)."""
    import pandas as pd
    from transformer_lens import patching as tl_patching

    partial = getattr(tl_patching, function_name)
    rows = torch.arange(runs.n_prompts)

    def tl_metric(logits):
        return metric(logits[rows, runs.read_positions], rows).mean()

    index_df = pd.DataFrame(
        [{"layer": c.layer, "head": c.index, "pos": c.position} for c in components]
    )[list(axes)]
    _, clean_cache = loaded.bridge.run_with_cache(runs.source_tokens)
    keywords = {k: v for k, v in partial.keywords.items() if k != "index_axis_names"}
    started = time.perf_counter()
    values = partial.func(
        loaded.bridge, runs.base_tokens, clean_cache, tl_metric, index_df=index_df, **keywords
    )
    return time.perf_counter() - started, values


class PeakMemory:
    """Peak memory of a block above its level at the start, in MiB.

    On CUDA, torch's own peak of allocated memory; on CPU, the process's resident set
    size sampled every ``interval`` seconds by a thread (a peak shorter than the
    interval can be missed, so the figure is a lower bound).
    """

    def __init__(self, device: str = "cpu", interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_mib = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            return self
        import psutil

        process = psutil.Process()
        self._start = self._peak = process.memory_info().rss
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.peak_mib = max(0.0, (peak - self._start) / 2**20)


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[object, float, float]:
    """``(result, seconds, peak MiB)`` of one call of ``fn``."""
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return result, seconds, memory.peak_mib


def sweep_flops(model, table, n_prompts: int, seq: int) -> tuple[float, float]:
    """``(floor, executed)`` FLOPs of a fast sweep from its result table.

    The floor is what the exact algorithm must compute after the no-op skips: for each
    patch that ran, the blocks from its layer on at the positions from its first
    effective position on, plus one unembedding per prompt (:func:`patched_run_flops`).
    Executed counts the passes as they ran: a pass starts at its earliest member's
    position, so the others compute a few positions more than they need.
    """
    floor = sum(
        patched_run_flops(model, n_prompts, seq, int(row.layer), int(row.first_position))
        for row in table.itertuples()
        if not row.skipped
    )
    executed = sum(
        n_variants * patched_run_flops(model, n_prompts, seq, layer, start)
        for layer, start, n_variants in table.attrs.get("passes", [])
    )
    return floor, executed


def bench_patching_sweeps(
    loaded, runs, metric, sample: int, ours_sample: int, full: bool, seed: int, device: str = "cpu"
) -> list[dict]:
    """Time the three implementations on each sweep; compare their numbers.

    Our implementation runs every component of the head sweep and the resid_pre sweep;
    for the heads x positions sweep (thousands of components) it runs a seeded sample of
    ``ours_sample`` components unless ``full`` (extrapolated linearly; the sample keeps
    the layer and position mix, which sets the cost per component). Each row also has
    the peak memory of each implementation and the FLOPs: the full forward per patch of
    the naive loop and TransformerLens, our executed FLOPs and the floor of the exact
    algorithm (:func:`sweep_flops`).
    """
    import numpy as np

    from circuit_repro.engine.hooks import all_components
    from circuit_repro.engine.patching import naive_patching_sweep, patching_sweep

    seq = runs.base_tokens.shape[1]
    full_forward = forward_flops(loaded.hf_model, runs.n_prompts, seq)
    rng = np.random.default_rng(seed)
    rows = []
    for name, (kind, by_position, tl_name, axes) in TL_SWEEPS.items():
        positions = range(seq) if by_position else [None]
        components = all_components(loaded.bridge, kind, positions)
        # TransformerLens orders by-position head sweeps as (layer, pos, head).
        components.sort(
            key=lambda c: (c.layer, -1 if c.position is None else c.position, c.index or 0)
        )
        n_sample = len(components) if full else min(sample, len(components))
        chosen = sorted(rng.choice(len(components), size=n_sample, replace=False))
        subset = [components[i] for i in chosen]

        ours_components, ours_chosen = components, list(range(len(components)))
        if by_position and not full and 0 < ours_sample < len(components):
            ours_chosen = sorted(
                set(rng.choice(len(components), size=ours_sample, replace=False)) | set(chosen)
            )
            ours_components = [components[i] for i in ours_chosen]
        scale = len(components) / len(ours_components)
        ours, ours_seconds, ours_mib = timed(
            partial(patching_sweep, loaded, runs, ours_components, metric, progress=True), device
        )
        ours_seconds *= scale
        floor, executed = (
            scale * f for f in sweep_flops(loaded.hf_model, ours, runs.n_prompts, seq)
        )
        position_in_ours = {index: row for row, index in enumerate(ours_chosen)}

        naive, naive_seconds, naive_mib = timed(
            partial(naive_patching_sweep, loaded, runs, subset, metric, progress=True), device
        )
        naive_seconds *= len(components) / n_sample
        (tl_seconds, tl_values), _, tl_mib = timed(
            partial(_tl_sample, loaded, runs, metric, tl_name, axes, subset), device
        )
        tl_seconds *= len(components) / n_sample

        ours_subset = ours["value"].to_numpy()[[position_in_ours[i] for i in chosen]]
        naive_flops = full_forward * len(components)
        rows.append(
            {
                "sweep": name,
                "components": len(components),
                "skipped_fraction": float(ours["skipped"].mean()),
                "timed_sample": n_sample,
                "ours_timed_components": len(ours_components),
                "naive_seconds": naive_seconds,
                "transformer_lens_seconds": tl_seconds,
                "ours_seconds": ours_seconds,
                "speedup_vs_naive": naive_seconds / ours_seconds,
                "speedup_vs_transformer_lens": tl_seconds / ours_seconds,
                "max_abs_diff_vs_naive": float(
                    np.abs(ours_subset - naive["value"].to_numpy()).max()
                ),
                "max_abs_diff_vs_transformer_lens": float(
                    np.abs(ours_subset - tl_values.double().cpu().numpy()).max()
                ),
                "ours_patches_per_second": len(components) / ours_seconds,
                "naive_gflop": naive_flops / 1e9,
                "ours_executed_gflop": executed / 1e9,
                "ours_floor_gflop": floor / 1e9,
                "floor_speedup_vs_naive": naive_flops / floor if floor else float("inf"),
                "naive_achieved_gflops_per_s": naive_flops / naive_seconds / 1e9,
                "transformer_lens_achieved_gflops_per_s": naive_flops / tl_seconds / 1e9,
                "ours_achieved_gflops_per_s": executed / ours_seconds / 1e9,
                "peak_mib_naive": naive_mib,
                "peak_mib_transformer_lens": tl_mib,
                "peak_mib_ours": ours_mib,
            }
        )
        print(
            f"{name:24s} {len(components):5d} components: naive {naive_seconds:8.1f} s, "
            f"TransformerLens {tl_seconds:8.1f} s, ours {ours_seconds:7.1f} s "
            f"(x{naive_seconds / ours_seconds:.1f} / x{tl_seconds / ours_seconds:.1f})",
            flush=True,
        )
        if name == "heads, all positions":
            rows[-1]["_head_table"] = ours
    return rows


def ablation_sanity(loaded, records, head_table, n_random: int = 10, seed: int = 0) -> dict:
    """Mean-ablating the 3 heads with the largest patching effect lowers the clean
    logit difference more than ablating 3 random heads (mean of ``n_random`` draws).

    The mean is taken over the ABC prompts (three unrelated names), the IOI reference
    distribution of Wang et al. 2022.
    """
    import numpy as np

    from circuit_repro.engine.forward import logits_at
    from circuit_repro.engine.hooks import Component, ablate, cache_activations
    from circuit_repro.engine.patching import runs_from_records

    runs, metric = runs_from_records(loaded.tokenizer, records, direction="corrupt -> clean")
    abc = loaded.tokenizer(
        [r.counterfactual("abc").prompt for r in records], return_tensors="pt", padding=True
    ).input_ids
    n_layers = loaded.bridge.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    with torch.no_grad(), cache_activations(loaded.bridge, names) as reference:
        loaded.bridge(abc)
    prompt_index = torch.arange(runs.n_prompts)

    @torch.no_grad()
    def ld_with(heads):
        with ablate(loaded.bridge, heads, "mean", reference=reference):
            logits = logits_at(loaded, runs.base_tokens, runs.read_positions)
        return metric(logits, prompt_index).mean().item()

    effect = (head_table["value"] - head_table["value"].median()).abs()
    top = head_table.loc[effect.nlargest(3).index]
    top_heads = [Component("head", int(r.layer), int(r.index)) for r in top.itertuples()]
    rng = np.random.default_rng(seed)
    all_heads = [Component("head", int(r.layer), int(r.index)) for r in head_table.itertuples()]
    random_lds = [
        ld_with([all_heads[i] for i in rng.choice(len(all_heads), 3, replace=False)])
        for _ in range(n_random)
    ]
    result = {
        "clean_logit_diff": ld_with([]),
        "top3_heads": [f"L{c.layer}H{c.index}" for c in top_heads],
        "top3_ablated_logit_diff": ld_with(top_heads),
        "random3_ablated_logit_diff_mean": float(np.mean(random_lds)),
        "random3_ablated_logit_diff_draws": random_lds,
    }
    result["top3_lower_than_random"] = (
        result["top3_ablated_logit_diff"] < result["random3_ablated_logit_diff_mean"]
    )
    return result


def bench_attribution(loaded, runs, metric, forward_seconds: float, head_table) -> dict:
    """AtP over all heads: wall time in forward passes, and its agreement with exact patching."""
    from scipy.stats import pearsonr, spearmanr

    from circuit_repro.engine.attribution import attribution_patching
    from circuit_repro.engine.hooks import all_components

    heads = all_components(loaded.bridge, "head")
    attribution_patching(loaded, runs, heads[:2], metric)  # warm-up
    started = time.perf_counter()
    scores = attribution_patching(loaded, runs, heads, metric)
    seconds = time.perf_counter() - started
    exact = head_table["value"].to_numpy() - head_table["value"].median()
    return {
        "components": len(heads),
        "seconds": seconds,
        "forward_passes": seconds / forward_seconds,
        "spearman_vs_exact": float(spearmanr(scores["value"], exact).statistic),
        "pearson_vs_exact": float(pearsonr(scores["value"], exact).statistic),
    }


def icl_bench_records(tokenizer, n_prompts: int, k_shot: int = 4, seed: int = 0):
    """``n_prompts`` k-shot sentiment prompts of one token length (the most common), the
    long-prompt case: about 64 tokens at k = 4. The counterfactual relabels the
    demonstrations, so source and base differ at scattered positions (each label)."""
    from collections import Counter

    from circuit_repro.tasks.icl import generate_icl

    records = generate_icl(tokenizer, n_prompts * 12, seed, k_shot=k_shot, task="sentiment")
    lengths = [len(tokenizer(r["prompt"]).input_ids) for r in records]
    length = Counter(lengths).most_common(1)[0][0]
    same = [r for r, n in zip(records, lengths, strict=True) if n == length]
    if len(same) < n_prompts:
        raise ValueError(f"only {len(same)} ICL prompts of {length} tokens; ask for fewer")
    return [TaskRecord.from_dict(record) for record in same[:n_prompts]]


def bench_case(loaded, case: str, args) -> dict:
    """Every sweep of one prompt set (``ioi`` or ``icl``) on one model."""
    from circuit_repro.engine.patching import runs_from_records, shared_prefix_length

    if case == "ioi":
        records = ioi_bench_records(loaded.tokenizer, args.batch)
        runs, metric = runs_from_records(loaded.tokenizer, records)
    else:
        records = icl_bench_records(loaded.tokenizer, args.icl_batch)
        runs, metric = runs_from_records(loaded.tokenizer, records, counterfactual="flipped_labels")
    n_prompts, seq = runs.base_tokens.shape
    with torch.no_grad():
        bridge_forward = best_seconds(lambda: loaded.bridge(runs.base_tokens), args.repeats)
    flops = forward_flops(loaded.hf_model, n_prompts, seq)
    sweeps = bench_patching_sweeps(
        loaded, runs, metric, args.sample, args.ours_sample, args.full, seed=0
    )
    head_table = sweeps[0].pop("_head_table")
    result = {
        "case": case,
        "prompts": n_prompts,
        "seq_len": seq,
        "direction": runs.direction,
        "shared_prefix_positions": shared_prefix_length(runs),
        "differing_positions": int((runs.base_tokens != runs.source_tokens).any(0).sum()),
        "bridge_forward_seconds": bridge_forward,
        "bridge_forward_gflops_per_s": flops / bridge_forward / 1e9,
        "sweeps": sweeps,
    }
    if case == "ioi":
        result["ablation_sanity"] = ablation_sanity(loaded, records, head_table)
        try:
            result["attribution_patching"] = bench_attribution(
                loaded, runs, metric, bridge_forward, head_table
            )
        except ImportError as error:
            result["attribution_patching"] = {"skipped": str(error)}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmarks of the forward pass and patching.")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--cases", nargs="+", default=["ioi", "icl"], choices=["ioi", "icl"])
    parser.add_argument("--batch", type=int, default=32, help="IOI prompts per run")
    parser.add_argument("--icl-batch", type=int, default=16, help="ICL prompts per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sample",
        type=int,
        default=12,
        help="components per sweep on which the naive loop and TransformerLens are timed",
    )
    parser.add_argument(
        "--ours-sample",
        type=int,
        default=540,
        help="components of each by-position sweep that our engine runs (0 = all)",
    )
    parser.add_argument("--full", action="store_true", help="time every component everywhere")
    parser.add_argument("--forward-only", action="store_true", help="skip the patching sweeps")
    parser.add_argument(
        "--no-parity", action="store_true", help="skip the comparisons with TransformerLens 4.3"
    )
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "results" / "bench"))
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)

    torch.manual_seed(0)
    ceiling = matmul_ceiling_gflops()
    forwards = [bench_forward(model, args.batch, args.repeats) for model in args.models]
    write_json(
        output_dir / "forward.json",
        provenance_record(
            threads=torch.get_num_threads(),
            matmul_ceiling_gflops=ceiling,
            forward=forwards,
            forward_fraction_of_ceiling=[f["gflops_per_s"] / ceiling for f in forwards],
        ),
    )
    print(f"threads: {torch.get_num_threads()}   fp32 matmul ceiling: {ceiling:.1f} GFLOP/s")
    for forward in forwards:
        print(
            f"forward {forward['model']}  batch {forward['batch']} x {forward['seq_len']} "
            f"tokens: {forward['seconds'] * 1e3:.0f} ms, {forward['gflop']:.1f} GFLOP, "
            f"{forward['gflops_per_s']:.1f} GFLOP/s "
            f"({100 * forward['gflops_per_s'] / ceiling:.0f}% of ceiling)"
        )
    if args.forward_only:
        return

    from circuit_repro.models.load import load_bridge

    # Each table is printed, and the file rewritten, as soon as its part is done, so an
    # interrupted benchmark keeps what it measured.
    result: dict = {"matmul_ceiling_gflops": ceiling, "models": {}}
    for model_id in args.models:
        loaded = load_bridge(ensure_prepared(model_id))
        result["models"][model_id] = {}
        for case in args.cases:
            result["models"][model_id][case] = bench_case(loaded, case, args)
            print_case_table(model_id, result["models"][model_id][case], ceiling)
            write_json(output_dir / "patching.json", provenance_record(**result))
        if not args.no_parity and model_id == "smollm2-135m":
            from circuit_repro.bench.transformer_lens_parity import (
                parity_rows,
                print_parity_table,
            )

            tiny = {m: load_bridge(ensure_prepared(m)) for m in ("tiny-gpt2", "tiny-neox")}
            result["transformer_lens_parity"] = parity_rows(loaded, tiny, n_prompts=args.icl_batch)
            print("\nAgainst what TransformerLens 4.3 ships, on the same bridge:\n")
            print_parity_table(result["transformer_lens_parity"])
            write_json(output_dir / "patching.json", provenance_record(**result))
        del loaded
    # Measure the ceiling again now and keep the best, so that a load on the machine
    # during the first measurement does not inflate the fractions of the ceiling.
    result["matmul_ceiling_gflops"] = max(ceiling, matmul_ceiling_gflops())
    write_json(output_dir / "patching.json", provenance_record(**result))
    print(f"wrote {output_dir / 'forward.json'} and {output_dir / 'patching.json'}")


def print_case_table(model_id: str, case: dict, ceiling: float) -> None:
    """One prompt set's sweeps: times, ratios, differences, FLOPs and memory."""
    print(
        f"\n{model_id}, {case['prompts']} {case['case'].upper()} prompts x {case['seq_len']} "
        f"tokens ({case['differing_positions']} positions differ, the first after "
        f"{case['shared_prefix_positions']} shared), fp32 matmul ceiling {ceiling:.0f} "
        f"GFLOP/s, bridge forward {case['bridge_forward_seconds']:.2f} s "
        f"({case['bridge_forward_gflops_per_s']:.0f} GFLOP/s)\n"
    )
    print(
        "| sweep | components | skipped | naive (s) | TransformerLens (s) | ours (s) | "
        "vs naive | vs TL | max diff vs TL | GFLOP naive / ours / floor | "
        "floor ratio | GFLOP/s naive / TL / ours | peak MiB naive / TL / ours |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in case["sweeps"]:
        sampled = "" if row["timed_sample"] == row["components"] else "*"
        ours_sampled = "" if row["ours_timed_components"] == row["components"] else "+"
        print(
            f"| {row['sweep']} | {row['components']} | {100 * row['skipped_fraction']:.0f}% | "
            f"{row['naive_seconds']:.0f}{sampled} | "
            f"{row['transformer_lens_seconds']:.0f}{sampled} | "
            f"{row['ours_seconds']:.1f}{ours_sampled} | "
            f"{row['speedup_vs_naive']:.1f}x | {row['speedup_vs_transformer_lens']:.1f}x | "
            f"{row['max_abs_diff_vs_transformer_lens']:.1e} | "
            f"{row['naive_gflop']:.0f} / {row['ours_executed_gflop']:.0f} / "
            f"{row['ours_floor_gflop']:.0f} | {row['floor_speedup_vs_naive']:.1f}x | "
            f"{row['naive_achieved_gflops_per_s']:.0f} / "
            f"{row['transformer_lens_achieved_gflops_per_s']:.0f} / "
            f"{row['ours_achieved_gflops_per_s']:.0f} | "
            f"{row['peak_mib_naive']:.0f} / {row['peak_mib_transformer_lens']:.0f} / "
            f"{row['peak_mib_ours']:.0f} |"
        )
    print(
        "\nskipped: patches that cannot change the metric (source and base activations "
        "bitwise equal wherever the metric can see them), not run. GFLOP: the naive loop "
        "and TransformerLens run a full forward per patch; ours counts the passes as run; "
        "the floor is what the exact algorithm must compute after the skips (blocks from "
        "the patched layer, positions from the first that differs, one unembedding per "
        "prompt); floor ratio = naive / floor, the best speed-up possible at equal "
        "throughput. Peak memory: above the level before the sweep (CPU: sampled RSS)."
    )
    if any(r["timed_sample"] < r["components"] for r in case["sweeps"]):
        print(
            "* timed on a seeded sample of components and extrapolated (one full forward "
            "per component); results compared on that sample."
        )
    if any(r["ours_timed_components"] < r["components"] for r in case["sweeps"]):
        print(
            "+ our engine ran a seeded sample of the components (layer and position mix "
            "preserved); time and FLOPs extrapolated linearly. `--full` runs everything."
        )
    atp = case.get("attribution_patching", {})
    if "seconds" in atp:
        print(
            f"\nAtP, all {atp['components']} heads: {atp['seconds']:.2f} s = "
            f"{atp['forward_passes']:.1f} forward passes; Spearman vs exact "
            f"{atp['spearman_vs_exact']:.3f}, Pearson {atp['pearson_vs_exact']:.3f}"
        )
    sanity = case.get("ablation_sanity")
    if sanity:
        print(
            f"Mean-ablating the top-3 heads {sanity['top3_heads']}: LD "
            f"{sanity['clean_logit_diff']:.2f} -> {sanity['top3_ablated_logit_diff']:.2f}; "
            f"3 random heads (mean of 10): {sanity['random3_ablated_logit_diff_mean']:.2f}"
        )


if __name__ == "__main__":
    main()
