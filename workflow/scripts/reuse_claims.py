"""Rule reuse_claims: the paper's headline numbers beside ours, with verdicts."""

import json

import pandas as pd

from circuit_repro.papers.reuse.analysis import claims_table
from circuit_repro.pipeline.rule_context import logged_rule

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    baselines = {}
    for path in snakemake.input.baselines:
        with open(path) as handle:
            summary = json.load(handle)
        baselines[summary["task"]] = summary["accuracy"]
    with open(snakemake.input.correlation) as handle:
        correlation = json.load(handle)
    claims = claims_table(
        snakemake.wildcards.model,
        pd.read_csv(snakemake.input.overlap),
        pd.read_csv(snakemake.input.groups),
        correlation,
        baselines,
    )
    claims.to_csv(snakemake.output.claims, index=False)
