"""Rule reuse_overlap: IOI's circuit against each other task's, with bootstrap CIs."""

import pandas as pd

from circuit_repro.papers.reuse.analysis import ReuseSettings, overlap_table
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = ReuseSettings.from_config(dict(ctx.params.reuse), seed=ctx.params.seed)
    tables = {
        task: pd.read_csv(path)
        for task, path in zip(ctx.params.tasks, ctx.input.path_patching, strict=True)
    }
    overlap = overlap_table(tables, pd.read_csv(ctx.input.reference_heads), settings)
    overlap.to_csv(ctx.output.overlap, index=False)
