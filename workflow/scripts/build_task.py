"""Rule build_task: write results/tasks/<model>/<task>.jsonl for the model's tokenizer."""

from pathlib import Path

from circuit_repro.models.load import load_tokenizer
from circuit_repro.pipeline.rule_context import logged_rule
from circuit_repro.provenance import write_sidecar
from circuit_repro.tasks import generate_task
from circuit_repro.tasks.base import write_jsonl

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    tokenizer = load_tokenizer(Path(snakemake.input.model).parent)
    records = generate_task(
        snakemake.wildcards.task, tokenizer, snakemake.params.task, snakemake.params.seed
    )
    write_jsonl(records, snakemake.output.prompts)
    write_sidecar(
        snakemake.output.prompts,
        model=snakemake.wildcards.model,
        task=snakemake.wildcards.task,
        config=dict(snakemake.params.task),
        seed=snakemake.params.seed,
        n_records=len(records),
    )
