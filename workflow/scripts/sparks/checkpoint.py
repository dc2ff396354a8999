"""Rule sparks_checkpoint: one checkpoint's circuit, head importances, head types and
accuracy."""

import json
from pathlib import Path

import numpy as np

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.sparks import SparksSettings
from circuit_repro.papers.sparks.checkpoint import analyse_checkpoint
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(SparksSettings, ctx.params.sparks, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    records = read_records(ctx.input.prompts[0]) if ctx.input.prompts else None
    heads, edges, shares, summary = analyse_checkpoint(loaded, ctx.params.entry, records, settings)
    heads.to_csv(ctx.output.heads, index=False)
    edges.to_csv(ctx.output.edges, index=False)
    with open(ctx.output.shares, "wb") as handle:
        np.save(handle, shares)
    Path(ctx.output.summary).write_text(json.dumps(summary, indent=2))
