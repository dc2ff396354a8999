"""Rule baseline: score a model on every task (one model load); per task a per-prompt
CSV and a summary JSON. Tasks whose scores are memoized are read back, not rescored."""

import io
from pathlib import Path

import pandas as pd

from circuit_repro.engine.behaviour import score_records, summarize_behaviour
from circuit_repro.models.load import load_model
from circuit_repro.pipeline.memo import Memo, fingerprint
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.provenance import write_json
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute, settings = ctx.params.compute, ctx.params.baseline
    memo, model, rescored = Memo(ctx.params.memo), None, []
    for task, prompts in zip(ctx.params.tasks, ctx.input.prompts, strict=True):
        key = fingerprint([prompts, ctx.input.model], compute=compute)
        text = memo.get(f"{task}.csv", key)
        if text is None:
            if model is None:
                model_dir = Path(ctx.input.model).parent
                model, tokenizer = load_model(model_dir, compute["device"], compute["dtype"])
            records = read_records(prompts)
            scores = score_records(model, tokenizer, records, batch_size=compute["batch_size"])
            text = scores.to_csv(index=False)
            memo.put(f"{task}.csv", key, text)
            rescored.append(task)
        # The summary always comes from the CSV text, so a memoized task and a fresh one
        # give identical outputs.
        scores = pd.read_csv(io.StringIO(text), float_precision="round_trip")
        summary = summarize_behaviour(
            scores,
            task=task,
            model_id=ctx.wildcards.model,
            n_resamples=settings["bootstrap_samples"],
            confidence=settings["confidence"],
            seed=ctx.params.seed,
        )
        ctx.output(f"{task}_scores").write_text(text)
        write_json(ctx.output(f"{task}_summary"), summary)
    kept = len(ctx.params.tasks) - len(rescored)
    print(f"scored {rescored}; read {kept} unchanged tasks' scores from {memo.folder}")
    ctx.provenance(rescored_tasks=rescored)
