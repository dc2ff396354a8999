"""Rule reuse_circuit: path patching by stage and head classes for one model and task."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse.analysis import ReuseSettings, circuit_and_classes
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_jsonl

with rule_context(snakemake) as ctx:
    compute, section = ctx.params.compute, dict(ctx.params.reuse)
    settings = ReuseSettings.from_config(section, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    records = read_jsonl(ctx.input.prompts)
    table, heads = circuit_and_classes(loaded, records, ctx.wildcards.task, settings)
    table.to_csv(ctx.output.path_patching, index=False)
    heads.to_csv(ctx.output.heads, index=False)
