"""Rule reuse_intervention: IOI-like attention in Colored Objects, per head group and per head."""

from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.intervention import intervention_results
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.provenance import write_json
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(ReuseSettings, ctx.params.reuse, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    groups, per_head, correlation = intervention_results(
        loaded,
        read_records(ctx.input.prompts),
        pd.read_csv(ctx.input.reference_heads),
        pd.read_csv(ctx.input.path_patching),
        settings,
    )
    groups.to_csv(ctx.output.groups, index=False)
    per_head.to_csv(ctx.output.per_head, index=False)
    write_json(ctx.output.correlation, correlation)
    ctx.provenance(task="colored_objects")
