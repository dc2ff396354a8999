"""Render a parameterised notebook with papermill (generic: every notebook rule uses it)."""

from pathlib import Path

import papermill

from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    Path(snakemake.output.notebook).parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        snakemake.input.notebook,
        snakemake.output.notebook,
        parameters=dict(snakemake.params.parameters),
        kernel_name="python3",
        cwd=str(Path.cwd()),
        progress_bar=False,
    )
