"""Rule baseline_summary: every model x task baseline, and a line per near-chance task."""

from pathlib import Path

import pandas as pd

from circuit_repro.engine.behaviour import baseline_summary_html
from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    table = pd.concat([pd.read_csv(path) for path in snakemake.input.tables], ignore_index=True)
    Path(snakemake.output.summary).write_text(baseline_summary_html(table))
