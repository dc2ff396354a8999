"""Rule transcoders_evaluate: sparsity (L0), reconstruction (FVU, dead features) and
faithfulness (next-token loss spliced in place of the MLP) of every dictionary, and
the top-activating contexts of a sample of features."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.transcoders import TranscodersSettings
from circuit_repro.papers.transcoders.evaluation import evaluate_sweep
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(
        TranscodersSettings, ctx.params.transcoders, seed=ctx.params.seed
    )
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    tables = evaluate_sweep(loaded, ctx.input.dictionaries, settings)
    for name, table in tables.items():
        table.to_csv(ctx.output[name], index=False)
