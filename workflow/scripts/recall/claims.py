"""Rule recall_claims: each claim of the recall paper measured and judged by the shared
policy."""

import pandas as pd

from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.recall.claims import recall_claims
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    claims = recall_claims(
        ctx.wildcards.model, pd.read_csv(ctx.input.contrasts), read_baselines(ctx.input.baselines)
    )
    claims.to_csv(ctx.output.claims, index=False)
