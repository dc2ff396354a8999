"""Rule reuse_claims: each claim of the reuse paper measured and judged by the shared policy."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.reuse.claims import reuse_claims
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    baselines = read_baselines(ctx.input.baselines)
    claims = reuse_claims(
        ctx.wildcards.model,
        pd.read_csv(ctx.input.overlap),
        pd.read_csv(ctx.input.groups),
        json.loads(Path(ctx.input.correlation).read_text()),
        baselines,
    )
    claims.to_csv(ctx.output.claims, index=False)
