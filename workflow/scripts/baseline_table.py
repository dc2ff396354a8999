"""Rule baseline_table: one row per task of a model's baseline behaviour."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    rows = [json.loads(Path(path).read_text()) for path in ctx.input.summaries]
    pd.DataFrame(rows).to_csv(ctx.output.table, index=False)
