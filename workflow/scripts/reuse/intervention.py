"""Rule reuse_intervention: IOI-like attention in Colored Objects, per head group (with
random-head controls) and per head."""

from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import in_mode
from circuit_repro.papers.reuse.intervention import intervention_results
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.provenance import write_json
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(ReuseSettings, ctx.params.reuse, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    groups, random_heads, per_head, correlation = intervention_results(
        loaded,
        read_records(ctx.input.prompts),
        pd.read_csv(ctx.input.reference_heads),
        in_mode(pd.read_csv(ctx.input.path_patching), settings.positions),
        pd.read_csv(ctx.input.target_heads),
        settings,
    )
    groups.to_csv(ctx.output.groups, index=False)
    random_heads.to_csv(ctx.output.random_heads, index=False)
    per_head.to_csv(ctx.output.per_head, index=False)
    write_json(ctx.output.correlation, correlation)
    ctx.provenance(task="colored_objects")
