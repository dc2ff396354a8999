"""Rule transcoders_train: the sweep of transcoders and SAEs of one model, trained on
activations collected from the offline corpus (dictionaries already trained with the
same settings are kept)."""

import json
from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.transcoders import TranscodersSettings
from circuit_repro.papers.transcoders.training import train_sweep
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(
        TranscodersSettings, ctx.params.transcoders, seed=ctx.params.seed
    )
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    layer = json.loads(Path(ctx.input.layer).read_text())["layer"]
    history, corpus = train_sweep(
        loaded, layer, settings, ctx.output.dictionaries, ctx.params.shards
    )
    history.to_csv(ctx.output.training, index=False)
    Path(ctx.output.corpus).write_text(json.dumps({**corpus, "layer": layer}, indent=2))
