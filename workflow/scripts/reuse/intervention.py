"""Rule reuse_intervention: IOI-like attention in Colored Objects, per head group (with
random-head controls) and per head; read back from the memo when its inputs are
unchanged (the circuit job rewrites them whenever any task's circuit is rerun)."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import in_mode
from circuit_repro.papers.reuse.intervention import intervention_results
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.memo import Memo, fingerprint
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

OUTPUTS = {
    "groups": "intervention.csv",
    "random_heads": "intervention_random.csv",
    "per_head": "intervention_heads.csv",
    "correlation": "intervention_correlation.json",
}

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(ReuseSettings, ctx.params.reuse, seed=ctx.params.seed)
    inputs = [ctx.input[name] for name in ("model", "prompts", "reference_heads")]
    inputs += [ctx.input.path_patching, ctx.input.target_heads]
    key = fingerprint(inputs, compute=compute, reuse=ctx.params.reuse, seed=ctx.params.seed)
    memo = Memo(ctx.params.memo)
    texts = memo.get_all(list(OUTPUTS.values()), key)
    if texts is None:
        loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
        groups, random_heads, per_head, correlation = intervention_results(
            loaded,
            read_records(ctx.input.prompts),
            pd.read_csv(ctx.input.reference_heads),
            in_mode(pd.read_csv(ctx.input.path_patching), settings.positions),
            pd.read_csv(ctx.input.target_heads),
            settings,
        )
        texts = {
            OUTPUTS["groups"]: groups.to_csv(index=False),
            OUTPUTS["random_heads"]: random_heads.to_csv(index=False),
            OUTPUTS["per_head"]: per_head.to_csv(index=False),
            OUTPUTS["correlation"]: json.dumps(correlation, indent=2, default=str) + "\n",
        }
        for name, text in texts.items():
            memo.put(name, key, text)
    else:
        print(f"inputs unchanged: read the results back from {memo.folder}")
    for output, name in OUTPUTS.items():
        ctx.output(output).write_text(texts[name])
    ctx.provenance(task="colored_objects")
