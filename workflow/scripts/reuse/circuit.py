"""Rule reuse_circuit: path patching by stage and head classes for one model and task."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import circuit_and_classes
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(ReuseSettings, ctx.params.reuse, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    records = read_records(ctx.input.prompts)
    table, heads = circuit_and_classes(loaded, records, ctx.wildcards.task, settings)
    table.to_csv(ctx.output.path_patching, index=False)
    heads.to_csv(ctx.output.heads, index=False)
