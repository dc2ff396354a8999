"""Rule subspace_claims: each claim of the subspace paper measured and judged by the shared
policy."""

import pandas as pd

from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.subspace.claims import subspace_claims
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    baselines = read_baselines(ctx.input.baselines)
    claims = subspace_claims(
        ctx.wildcards.model,
        pd.read_csv(ctx.input.table),
        pd.read_csv(ctx.input.contrasts),
        pd.read_csv(ctx.input.facts_summary),
        baselines,
    )
    claims.to_csv(ctx.output.claims, index=False)
