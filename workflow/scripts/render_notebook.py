"""Render a parameterised notebook with papermill (every notebook rule uses this script);
see :mod:`circuit_repro.pipeline.notebooks`."""

from circuit_repro.pipeline.notebooks import render_notebook
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    render_notebook(ctx)
