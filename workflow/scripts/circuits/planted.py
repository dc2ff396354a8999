"""Rule circuits_planted: each method's AUROC against a circuit planted in tiny models."""

from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.circuits import CircuitsSettings
from circuit_repro.papers.circuits.planted import planted_recovery
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(CircuitsSettings, ctx.params.circuits, seed=ctx.params.seed)
    tables = [
        planted_recovery(load_bridge(Path(marker).parent), model, settings.ig_steps, settings.seed)
        for model, marker in zip(ctx.params.models, ctx.input.models, strict=True)
    ]
    pd.concat(tables).to_csv(ctx.output.planted, index=False)
