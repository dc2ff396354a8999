"""Rule report: results/report.html, claims first, then every figure with its provenance."""

import pandas as pd

from circuit_repro.pipeline.report import write_report
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.provenance import provenance_record

with rule_context(snakemake) as ctx:
    claims = pd.read_csv(ctx.input.claims) if ctx.input.claims else pd.DataFrame()
    environment = provenance_record()
    write_report(
        claims,
        ctx.params.figures,
        ctx.params.config,
        ctx.output.html,
        header={"git": environment.get("git_commit", "unknown"), "made": environment["created"]},
    )
