"""Rule train_series: train a checkpoint series (resuming from its last complete
checkpoint) and write its loss curve; each checkpoint is then prepared as a model."""

from pathlib import Path

from circuit_repro.engine.recipes import train_series
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.provenance import write_json

with rule_context(snakemake) as ctx:
    entry = ctx.params.entry
    base_dir = Path(ctx.input.base[0]).parent if ctx.input.base else None
    # Checkpoints go beside the manifest, which is written last (the job's marker).
    out_dir = ctx.final_paths["manifest"].parent
    run = train_series(entry, base_dir, out_dir)
    run.losses.to_csv(ctx.output.losses, index=False)
    write_json(
        ctx.output.manifest,
        {
            "series": ctx.wildcards.series,
            "checkpoints": {s: str(p) for s, p in run.checkpoints.items()},
        },
    )
