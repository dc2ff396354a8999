"""Rule reuse_circuit: path patching by stage and head classes for one model and task."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse.analysis import ReuseSettings, circuit_and_classes
from circuit_repro.pipeline.rule_context import logged_rule
from circuit_repro.provenance import write_sidecar
from circuit_repro.tasks.base import read_jsonl

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    compute, section = snakemake.params.compute, dict(snakemake.params.reuse)
    settings = ReuseSettings.from_config(section, seed=snakemake.params.seed)
    loaded = load_bridge(Path(snakemake.input.model).parent, compute["device"], compute["dtype"])
    records = read_jsonl(snakemake.input.prompts)
    table, heads = circuit_and_classes(loaded, records, snakemake.wildcards.task, settings)
    table.to_csv(snakemake.output.path_patching, index=False)
    heads.to_csv(snakemake.output.heads, index=False)
    for output in (snakemake.output.path_patching, snakemake.output.heads):
        write_sidecar(
            output,
            model=snakemake.wildcards.model,
            task=snakemake.wildcards.task,
            config={"compute": dict(compute), "reuse": section},
            seed=snakemake.params.seed,
        )
