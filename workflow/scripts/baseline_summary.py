"""Rule baseline_summary: every model x task baseline, and a line per near-chance task."""

import pandas as pd

from circuit_repro.engine.behaviour import baseline_summary_html
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    table = pd.concat([pd.read_csv(path) for path in ctx.input.tables], ignore_index=True)
    ctx.output.summary.write_text(baseline_summary_html(table))
