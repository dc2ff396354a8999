"""Rule sparks_interventions: the emergent heads zero-ablated and scaled, against
size-matched random heads, in the base and the post-trained checkpoint."""

from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.sparks import SparksSettings
from circuit_repro.papers.sparks.series import (
    intervention_summary,
    run_interventions,
    top_emergent,
)
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(SparksSettings, ctx.params.sparks, seed=ctx.params.seed)
    heads = top_emergent(pd.read_csv(ctx.input.changes), settings.max_intervened_heads)
    columns = ["model", "intervention", "set", "draw", "prompt", "correct"]
    accuracy = pd.DataFrame(columns=columns)
    if heads:
        base = load_bridge(Path(ctx.input.base).parent, compute["device"], compute["dtype"])
        final = load_bridge(Path(ctx.input.final).parent, compute["device"], compute["dtype"])
        records = read_records(ctx.input.prompts[0])[: settings.intervention_prompts]
        accuracy = run_interventions(base, final, records, heads, settings)
    accuracy.to_csv(ctx.output.accuracy, index=False)
    summary = intervention_summary(
        accuracy, settings.bootstrap_samples, settings.confidence, settings.seed
    )
    summary.to_csv(ctx.output.summary, index=False)
