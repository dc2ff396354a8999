"""Rule icl_claims: each claim of the ICL paper measured and judged by the shared policy."""

import pandas as pd

from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.icl.claims import icl_claims
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    tasks = ctx.params.tasks
    claims = icl_claims(
        ctx.wildcards.model,
        dict(zip(tasks, map(pd.read_csv, ctx.input.contrasts), strict=True)),
        dict(zip(tasks, map(pd.read_csv, ctx.input.knockouts), strict=True)),
        read_baselines(ctx.input.baselines),
    )
    claims.to_csv(ctx.output.claims, index=False)
