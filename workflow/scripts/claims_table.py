"""Rule claims_table: every paper's claims.csv in one table and one HTML page."""

from pathlib import Path

import pandas as pd

from circuit_repro.papers.claims import claims_html
from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    table = pd.concat([pd.read_csv(path) for path in snakemake.input.claims], ignore_index=True)
    table.to_csv(snakemake.output.table, index=False)
    Path(snakemake.output.html).write_text(claims_html(table))
