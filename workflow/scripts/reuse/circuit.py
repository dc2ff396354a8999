"""Rule reuse_circuit: path patching by stage and head classes for one model, every task
(one model load); a task whose inputs are unchanged is read back from the memo."""

from pathlib import Path

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.reuse import ReuseSettings
from circuit_repro.papers.reuse.circuit import circuit_and_classes
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.memo import Memo, fingerprint
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

KINDS = ("path_patching", "heads")

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(ReuseSettings, ctx.params.reuse, seed=ctx.params.seed)
    memo, loaded, computed = Memo(ctx.params.memo), None, []
    for task, prompts in zip(ctx.params.tasks, ctx.input.prompts, strict=True):
        key = fingerprint(
            [prompts, ctx.input.model],
            compute=compute,
            reuse=ctx.params.reuse,
            seed=ctx.params.seed,
        )
        names = [f"{task}-{kind}.csv" for kind in KINDS]
        texts = memo.get_all(names, key)
        if texts is None:
            if loaded is None:
                model_dir = Path(ctx.input.model).parent
                loaded = load_bridge(model_dir, compute["device"], compute["dtype"])
            tables = circuit_and_classes(loaded, read_records(prompts), task, settings)
            texts = {
                name: table.to_csv(index=False) for name, table in zip(names, tables, strict=True)
            }
            for name, text in texts.items():
                memo.put(name, key, text)
            computed.append(task)
        for kind, name in zip(KINDS, names, strict=True):
            ctx.output(f"{task}_{kind}").write_text(texts[name])
    kept = len(ctx.params.tasks) - len(computed)
    print(f"path patching ran for {computed}; read {kept} unchanged tasks from {memo.folder}")
    ctx.provenance(recomputed_tasks=computed)
