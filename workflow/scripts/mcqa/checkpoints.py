"""Rule mcqa_checkpoints: the correct-letter heads' label attention and the task's
accuracy at each checkpoint of the analysed model's series (empty for a model that is
not part of one)."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.mcqa import McqaSettings
from circuit_repro.papers.mcqa.analysis import checkpoint_heads
from circuit_repro.papers.mcqa.claims import parse_head
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

COLUMNS = ["step", "layer", "head", "accuracy", "correct", "other", "top_is_correct"]

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(McqaSettings, ctx.params.mcqa, seed=ctx.params.seed)
    records = read_records(ctx.input.prompts)[: settings.prompts]
    heads = [
        parse_head(name) for name in json.loads(Path(ctx.input.summary).read_text())["top_heads"]
    ]
    tables = [pd.DataFrame(columns=COLUMNS)]
    for path, step in zip(ctx.input.models, ctx.params.steps, strict=True):
        loaded = load_bridge(Path(path).parent, compute["device"], compute["dtype"])
        tables.append(checkpoint_heads(loaded, records, heads, step))
    pd.concat(tables, ignore_index=True).to_csv(ctx.output.checkpoints, index=False)
