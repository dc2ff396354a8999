"""Rule transcoders_layer: the greater-than MLP of one model (each MLP's output
mean-ablated at the final position), unless the config names a layer."""

import json
from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.transcoders import TranscodersSettings
from circuit_repro.papers.transcoders.analysis import (
    choose_layer,
    greater_than_batch,
    mlp_layer_effects,
)
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(
        TranscodersSettings, ctx.params.transcoders, seed=ctx.params.seed
    )
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    records = read_records(ctx.input.prompts)[: settings.prompts]
    effects = mlp_layer_effects(loaded, greater_than_batch(loaded.tokenizer, records))
    effects.to_csv(ctx.output.layers, index=False)
    layer = choose_layer(effects, settings.layer)
    Path(ctx.output.layer).write_text(json.dumps({"layer": layer, "chosen": settings.layer < 0}))
