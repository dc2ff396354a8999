"""Rule baseline: score a model on a task; per-prompt CSV and a summary JSON."""

from pathlib import Path

from circuit_repro.engine.behaviour import score_records, summarize_behaviour
from circuit_repro.models.load import load_model
from circuit_repro.pipeline.rule_context import logged_rule
from circuit_repro.provenance import write_json, write_sidecar
from circuit_repro.tasks.base import read_jsonl

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    compute, settings = snakemake.params.compute, snakemake.params.baseline
    model, tokenizer = load_model(
        Path(snakemake.input.model).parent, compute["device"], compute["dtype"]
    )
    records = read_jsonl(snakemake.input.prompts)
    scores = score_records(model, tokenizer, records, batch_size=compute["batch_size"])
    summary = summarize_behaviour(
        scores,
        task=snakemake.wildcards.task,
        model_id=snakemake.wildcards.model,
        n_resamples=settings["bootstrap_samples"],
        confidence=settings["confidence"],
        seed=snakemake.params.seed,
    )
    scores.to_csv(snakemake.output.scores, index=False)
    write_json(snakemake.output.summary, summary)
    for output in (snakemake.output.scores, snakemake.output.summary):
        write_sidecar(
            output,
            model=snakemake.wildcards.model,
            task=snakemake.wildcards.task,
            config={"compute": dict(compute), "baseline": dict(settings)},
            seed=snakemake.params.seed,
        )
