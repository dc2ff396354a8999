"""Rule fetch_model: bring a model's raw weights into resources/downloads/<id>/."""

from circuit_repro.models.fetch import fetch_model
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    # The library writes the manifest itself, last (atomically), into the download folder.
    manifest = ctx.final("manifest")
    fetch_model(ctx.wildcards.model, ctx.params.entry, manifest.parent)
