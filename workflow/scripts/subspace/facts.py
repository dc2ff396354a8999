"""Rule subspace_facts: per-fact 1-D directions at the last subject token and the rank-1
edits they define, on held-out prompts about the subject."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.subspace import SubspaceSettings
from circuit_repro.papers.subspace.facts import run_facts
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(SubspaceSettings, ctx.params.subspace, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    per_pair, summary = run_facts(loaded, read_records(ctx.input.prompts), settings)
    per_pair.to_csv(ctx.output.per_pair, index=False)
    summary.to_csv(ctx.output.summary, index=False)
