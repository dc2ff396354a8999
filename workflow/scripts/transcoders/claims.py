"""Rule transcoders_claims: each claim of the transcoders paper measured and judged by
the shared policy, the greater-than claims gated on the task's baseline."""

import pandas as pd

from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.transcoders import TranscodersSettings
from circuit_repro.papers.transcoders.claims import transcoders_claims
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(
        TranscodersSettings, ctx.params.transcoders, seed=ctx.params.seed
    )
    names = ("sweep", "losses", "top_k", "top_k_prompts", "connections")
    tables = {name: pd.read_csv(ctx.input[name]) for name in names}
    baselines = read_baselines(ctx.input.baselines)
    claims = transcoders_claims(ctx.wildcards.model, tables, baselines, settings)
    claims.to_csv(ctx.output.claims, index=False)
