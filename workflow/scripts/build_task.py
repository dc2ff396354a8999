"""Rule build_task: write results/tasks/<model>/<task>.jsonl for the model's tokenizer."""

from pathlib import Path

from circuit_repro.models.load import load_tokenizer
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks import generate_task
from circuit_repro.tasks.base import write_jsonl

with rule_context(snakemake) as ctx:
    tokenizer = load_tokenizer(Path(ctx.input.model).parent)
    records = generate_task(ctx.wildcards.task, tokenizer, ctx.params.task, ctx.params.seed)
    write_jsonl(records, ctx.output.prompts)
    ctx.provenance(n_records=len(records))
