"""Rule mcqa_claims: each claim of the mcqa paper measured and judged by the shared
policy, gated on the analysed model's baseline on the task."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.papers.mcqa import McqaSettings
from circuit_repro.papers.mcqa.claims import mcqa_claims, task_baseline
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(McqaSettings, ctx.params.mcqa, seed=ctx.params.seed)
    tables = {Path(path).stem: pd.read_csv(path) for path in ctx.input.tables}
    summary = json.loads(Path(ctx.input.summary).read_text())
    baselines = task_baseline(summary, ctx.params.task, settings)
    checkpoints = pd.read_csv(ctx.input.checkpoints)
    claims = mcqa_claims(
        ctx.wildcards.model, tables, summary, baselines, ctx.params.task, settings, checkpoints
    )
    claims.to_csv(ctx.output.claims, index=False)
