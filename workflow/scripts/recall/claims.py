"""Rule recall_claims: each claim of the recall paper measured and judged by the shared
policy, gated on the task's baseline and on each family's own."""

import pandas as pd

from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.recall.claims import family_baselines, recall_claims
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    model, settings = ctx.wildcards.model, ctx.params.baseline
    families = {r.id: r.fields["family"] for r in read_records(ctx.input.prompts)}
    baselines = read_baselines(ctx.input.baselines)
    baselines |= family_baselines(
        pd.read_csv(ctx.input.scores), families, model,
        settings["bootstrap_samples"], settings["confidence"], ctx.params.seed,
    )  # fmt: skip
    claims = recall_claims(model, pd.read_csv(ctx.input.contrasts), baselines)
    claims.to_csv(ctx.output.claims, index=False)
