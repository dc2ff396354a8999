"""Rule prepare_model: write resources/models/<id>/ (safetensors, tokenizer, provenance)."""

from pathlib import Path

from circuit_repro.engine.training import checkpoint_dir
from circuit_repro.models.prepare import prepare_model
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    # The library fills the model folder and writes its provenance.json (the marker) last.
    marker = ctx.final("marker")
    entry = ctx.params.entry
    checkpoint = None
    if entry["source"] == "trained":  # a series member: its training checkpoint's folder
        checkpoint = checkpoint_dir(Path(ctx.input.series[0]).parent, entry["step"])
    prepare_model(
        ctx.wildcards.model,
        entry,
        download_dir=Path(ctx.input.manifest).parent,
        model_dir=marker.parent,
        checkpoint=checkpoint,
    )
