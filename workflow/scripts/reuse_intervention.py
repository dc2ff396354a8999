"""Rule reuse_intervention: IOI-like attention in Colored Objects, per head group and per head."""

from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse.analysis import ReuseSettings, intervention_results
from circuit_repro.pipeline.rule_context import logged_rule
from circuit_repro.provenance import write_json, write_sidecar
from circuit_repro.tasks.base import read_jsonl

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    compute, section = snakemake.params.compute, dict(snakemake.params.reuse)
    settings = ReuseSettings.from_config(section, seed=snakemake.params.seed)
    loaded = load_bridge(Path(snakemake.input.model).parent, compute["device"], compute["dtype"])
    groups, per_head, correlation = intervention_results(
        loaded,
        read_jsonl(snakemake.input.prompts),
        pd.read_csv(snakemake.input.reference_heads),
        pd.read_csv(snakemake.input.path_patching),
        settings,
    )
    groups.to_csv(snakemake.output.groups, index=False)
    per_head.to_csv(snakemake.output.per_head, index=False)
    write_json(snakemake.output.correlation, correlation)
    for output in snakemake.output:
        write_sidecar(
            output,
            model=snakemake.wildcards.model,
            task="colored_objects",
            config={"compute": dict(compute), "reuse": section},
            seed=snakemake.params.seed,
        )
