"""Rule sparks_series: cohorts, emergent heads and their importance change, and the
emergence steps of a checkpoint series."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from circuit_repro.papers.sparks import SparksSettings
from circuit_repro.papers.sparks.series import run_series
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(SparksSettings, ctx.params.sparks, seed=ctx.params.seed)
    files = iter(ctx.input.checkpoints)  # heads, edges, shares, summary per member
    checkpoints = []
    for _ in ctx.params.members:
        heads, edges, shares, summary = next(files), next(files), next(files), next(files)
        checkpoints.append({
            "heads": pd.read_csv(heads), "edges": pd.read_csv(edges),
            "shares": np.load(shares), "summary": json.loads(Path(summary).read_text()),
        })  # fmt: skip
    n_layers = int(checkpoints[0]["heads"]["layer"].max()) + 1
    n_heads = int(checkpoints[0]["heads"]["head"].max()) + 1
    tables = run_series(checkpoints, pd.read_csv(ctx.input.losses), settings, n_layers, n_heads)
    for name in ("checkpoints", "heads", "cohorts", "changes", "emergence", "counts"):
        tables[name].to_csv(ctx.output[name], index=False)
