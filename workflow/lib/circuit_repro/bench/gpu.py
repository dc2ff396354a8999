"""``make gpu-check``: does the pipeline run on this machine's GPU, how fast, how close.

On a machine where torch sees CUDA, in one process and one JSON file
(``results/bench/gpu.json``):

1. the quick preset with ``config/presets/gpu.yaml`` (cuda, bfloat16), end to end, in
   a scratch copy of the workflow (so it never touches this checkout's results);
2. a plain forward pass and the all-positions head sweep of SmolLM2-135M on 32 IOI
   prompts, on cuda in float32 and in bfloat16 (time, achieved GFLOP/s, peak memory);
3. the largest difference between the head sweep on CPU and on the GPU, per dtype.

Each step records its error instead of stopping the others. Without a GPU it prints one
line and exits 0: nothing here is needed to build or test the project.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from circuit_repro.paths import REPO_ROOT
from circuit_repro.provenance import provenance_record, write_json

WORKFLOW_FILES = ("Snakefile", "config", "workflow", "notebooks")


def quick_preset_on_gpu(cores: int, timeout: int) -> dict:
    """The quick preset with the GPU preset on top, in a scratch copy of the workflow."""
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for name in WORKFLOW_FILES:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, Path(scratch) / name)
            else:
                shutil.copy2(source, Path(scratch) / name)
        started = time.perf_counter()
        run = subprocess.run(
            [snakemake, "--cores", str(cores), "--configfile", "config/presets/quick.yaml",
             "config/presets/gpu.yaml"],
            cwd=scratch, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return {
            "returncode": run.returncode,
            "seconds": time.perf_counter() - started,
            "stderr_tail": run.stderr[-2000:],
        }


def head_sweep(model_id: str, device: str, dtype: str, n_prompts: int) -> tuple[dict, object]:
    """The all-positions head sweep on IOI prompts on ``device`` in ``dtype``."""
    from circuit_repro.bench.patching import ioi_bench_records, timed
    from circuit_repro.engine.hooks import all_components
    from circuit_repro.engine.patching import patching_sweep, runs_from_records
    from circuit_repro.models.load import load_bridge
    from circuit_repro.models.prepare import ensure_prepared

    loaded = load_bridge(ensure_prepared(model_id), device, dtype)
    records = ioi_bench_records(loaded.tokenizer, n_prompts)
    runs, metric = runs_from_records(loaded.tokenizer, records)
    runs = runs.to(device)
    heads = all_components(loaded.bridge, "head")
    patching_sweep(loaded, runs, heads[:4], metric, progress=False)  # warm-up
    table, seconds, peak_mib = timed(
        lambda: patching_sweep(loaded, runs, heads, metric, progress=False), device
    )
    return {"device": device, "dtype": dtype, "seconds": seconds, "peak_mib": peak_mib}, table


def step(record: dict, name: str, fn) -> object:
    """Run one step, keeping its result or its error in ``record[name]``."""
    try:
        result = fn()
    except Exception as error:  # noqa: BLE001 - a failed step must not hide the others
        record[name] = {
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
        }
        print(f"{name}: failed ({type(error).__name__}: {error})", flush=True)
        return None
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the pipeline and engine on a GPU.")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=300, help="seconds for the quick run")
    parser.add_argument("--output", default=str(REPO_ROOT / "results" / "bench" / "gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"gpu-check: torch {torch.__version__} sees no CUDA device here; nothing to "
            "check (run it on a machine with a GPU and a CUDA build of torch)"
        )
        return 0

    import numpy as np

    from circuit_repro.bench.patching import bench_forward

    record: dict = {"gpu": torch.cuda.get_device_name(0), "model": args.model}
    quick = step(record, "quick_preset", lambda: quick_preset_on_gpu(args.cores, args.timeout))
    if quick is not None:
        record["quick_preset"] = quick
        print(f"quick preset on cuda/bfloat16: rc {quick['returncode']}, {quick['seconds']:.0f} s")
    forwards = {}
    for dtype in ("float32", "bfloat16"):
        forward = step(
            record,
            f"forward_{dtype}",
            lambda dtype=dtype: bench_forward(args.model, args.prompts, 5, "cuda", dtype),
        )
        if forward is not None:
            forwards[dtype] = forward
            print(f"forward cuda/{dtype}: {forward['seconds'] * 1e3:.1f} ms, "
                  f"{forward['gflops_per_s']:.0f} GFLOP/s")  # fmt: skip
    record["forward"] = forwards
    cpu = step(record, "sweep_cpu", lambda: head_sweep(args.model, "cpu", "float32", args.prompts))
    sweeps = {}
    for dtype in ("float32", "bfloat16"):
        gpu = step(
            record,
            f"sweep_cuda_{dtype}",
            lambda dtype=dtype: head_sweep(args.model, "cuda", dtype, args.prompts),
        )
        if gpu is None:
            continue
        timing, table = gpu
        if cpu is not None:
            difference = np.abs(table["value"].to_numpy() - cpu[1]["value"].to_numpy())
            timing["max_abs_diff_vs_cpu"] = float(difference.max())
            timing["max_abs_value_cpu"] = float(np.abs(cpu[1]["value"].to_numpy()).max())
            timing["cpu_seconds"] = cpu[0]["seconds"]
        sweeps[dtype] = timing
        print(f"head sweep cuda/{dtype}: {timing['seconds']:.2f} s, "
              f"max |GPU - CPU| {timing.get('max_abs_diff_vs_cpu', float('nan')):.2e}")  # fmt: skip
    record["head_sweep"] = sweeps
    write_json(Path(args.output), provenance_record(**record))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
