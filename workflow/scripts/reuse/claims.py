"""Rule reuse_claims: the paper's headline numbers beside ours, with verdicts."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.papers.reuse.analysis import claims_table
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    baselines = {}
    for path in ctx.input.baselines:
        summary = json.loads(Path(path).read_text())
        baselines[summary["task"]] = summary["accuracy"]
    claims = claims_table(
        ctx.wildcards.model,
        pd.read_csv(ctx.input.overlap),
        pd.read_csv(ctx.input.groups),
        json.loads(Path(ctx.input.correlation).read_text()),
        baselines,
    )
    claims.to_csv(ctx.output.claims, index=False)
