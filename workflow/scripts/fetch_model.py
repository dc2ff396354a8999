"""Rule fetch_model: bring a model's raw weights into resources/downloads/<id>/."""

from pathlib import Path

from circuit_repro.models.load import fetch_model
from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    fetch_model(
        snakemake.wildcards.model,
        snakemake.params.entry,
        Path(snakemake.output.manifest).parent,
    )
