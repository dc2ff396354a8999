"""Rule prepare_model: write resources/models/<id>/ (safetensors, tokenizer, provenance)."""

from pathlib import Path

from circuit_repro.models.load import prepare_model
from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    prepare_model(
        snakemake.wildcards.model,
        snakemake.params.entry,
        download_dir=Path(snakemake.input.manifest).parent,
        model_dir=Path(snakemake.output.marker).parent,
    )
