"""Rule sparks_claims: each measurable claim of one checkpoint series, judged by the
shared policy."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.papers.sparks import SparksSettings
from circuit_repro.papers.sparks.claims import sparks_claims
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(SparksSettings, ctx.params.sparks, seed=ctx.params.seed)
    interventions = pd.read_csv(ctx.input.interventions[0]) if ctx.input.interventions else None
    claims = sparks_claims(
        ctx.wildcards.series,
        json.loads(Path(ctx.input.final_summary).read_text()),
        pd.read_csv(ctx.input.counts),
        pd.read_csv(ctx.input.emergence),
        interventions,
        settings,
    )
    claims.to_csv(ctx.output.claims, index=False)
