"""Rule circuits_claims: each claim of the circuits unit measured and judged by the
shared policy."""

import pandas as pd

from circuit_repro.papers.circuits import CircuitsSettings
from circuit_repro.papers.circuits.claims import circuits_claims
from circuit_repro.papers.claims import read_baselines
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(CircuitsSettings, ctx.params.circuits, seed=ctx.params.seed)
    prompt_metrics = {
        task: pd.read_csv(path)
        for task, path in zip(ctx.params.tasks, ctx.input.prompt_metrics, strict=True)
    }
    claims = circuits_claims(
        ctx.wildcards.model, prompt_metrics, ctx.params.task_models,
        read_baselines(ctx.input.baselines), settings,
    )  # fmt: skip
    claims.to_csv(ctx.output.claims, index=False)
