"""Rule mcqa_analysis: every analysis of the multiple-choice circuit on one model."""

import json
from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.mcqa import McqaSettings
from circuit_repro.papers.mcqa.analysis import analyse
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(McqaSettings, ctx.params.mcqa, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    tables, summary = analyse(loaded, read_records(ctx.input.prompts), settings)
    for name, table in tables.items():
        table.to_csv(ctx.output[name], index=False)
    Path(ctx.output.summary).write_text(json.dumps(summary, indent=2))
