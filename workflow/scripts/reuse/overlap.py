"""Rule reuse_overlap: IOI's circuit against each other task's, with bootstrap CIs."""

import pandas as pd

from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.overlap import overlap_table
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(ReuseSettings, ctx.params.reuse, seed=ctx.params.seed)
    tables = {
        task: pd.read_csv(path)
        for task, path in zip(ctx.params.tasks, ctx.input.path_patching, strict=True)
    }
    overlap = overlap_table(tables, pd.read_csv(ctx.input.reference_heads), settings)
    overlap.to_csv(ctx.output.overlap, index=False)
