"""Rule icl_task: one ICL task on one model (k-shot curve, steps 1-3, knockouts)."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.icl import IclSettings
from circuit_repro.papers.icl.run import TABLES, run_task
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(IclSettings, ctx.params.icl, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    result = run_task(loaded, read_records(ctx.input.prompts), settings)
    for name in TABLES:
        getattr(result, name).to_csv(ctx.output[name], index=False)
