"""Rule recall_analysis: both circuits located, ablated against matched random sets, and
the 2x2 tables, on one model."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.recall import RecallSettings
from circuit_repro.papers.recall.analysis import TABLES, run_recall
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(RecallSettings, ctx.params.recall, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    tables = run_recall(loaded, read_records(ctx.input.prompts), settings)
    for name in TABLES:
        tables[name].to_csv(ctx.output[name], index=False)
