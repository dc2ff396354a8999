"""Rule baseline: score a model on a task; per-prompt CSV and a summary JSON."""

from pathlib import Path

from circuit_repro.engine.behaviour import score_records, summarize_behaviour
from circuit_repro.models.load import load_model
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.provenance import write_json
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute, settings = ctx.params.compute, ctx.params.baseline
    model, tokenizer = load_model(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    records = read_records(ctx.input.prompts)
    scores = score_records(model, tokenizer, records, batch_size=compute["batch_size"])
    summary = summarize_behaviour(
        scores,
        task=ctx.wildcards.task,
        model_id=ctx.wildcards.model,
        n_resamples=settings["bootstrap_samples"],
        confidence=settings["confidence"],
        seed=ctx.params.seed,
    )
    scores.to_csv(ctx.output.scores, index=False)
    write_json(ctx.output.summary, summary)
