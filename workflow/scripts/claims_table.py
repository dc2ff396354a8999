"""Rule claims_table: every paper's claims.csv in one table and one HTML page."""

import pandas as pd

from circuit_repro.papers.claims import claims_html
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    table = pd.concat([pd.read_csv(path) for path in ctx.input.claims], ignore_index=True)
    table.to_csv(ctx.output.table, index=False)
    ctx.output.html.write_text(claims_html(table))
