"""Rule baseline_table: one row per task of a model's baseline behaviour."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    rows = [json.loads(Path(path).read_text()) for path in snakemake.input.summaries]
    pd.DataFrame(rows).to_csv(snakemake.output.table, index=False)
