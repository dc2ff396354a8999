"""Rule transcoders_greater_than: greater-than with the top-k transcoder features vs the
top-k MLP neurons (beside random sets of k), and the connections from the layer
before's features, full and factorised."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.transcoders import TranscodersSettings
from circuit_repro.papers.transcoders.evaluation import greater_than_tables
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(
        TranscodersSettings, ctx.params.transcoders, seed=ctx.params.seed
    )
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    records = read_records(ctx.input.prompts)[: settings.prompts]
    tables = greater_than_tables(loaded, records, ctx.input.dictionaries, settings)
    for name, table in tables.items():
        table.to_csv(ctx.output[name], index=False)
