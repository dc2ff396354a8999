"""Rule reuse_overlap: IOI's circuit against each other task's, with bootstrap CIs."""

import pandas as pd

from circuit_repro.papers.reuse.analysis import ReuseSettings, overlap_table
from circuit_repro.pipeline.rule_context import logged_rule
from circuit_repro.provenance import write_sidecar

with logged_rule(snakemake.log[0], rule=snakemake.rule, attempt=snakemake.resources.attempt):
    section = dict(snakemake.params.reuse)
    settings = ReuseSettings.from_config(section, seed=snakemake.params.seed)
    tables = {
        task: pd.read_csv(path)
        for task, path in zip(snakemake.params.tasks, snakemake.input.path_patching, strict=True)
    }
    overlap = overlap_table(tables, pd.read_csv(snakemake.input.reference_heads), settings)
    overlap.to_csv(snakemake.output.overlap, index=False)
    write_sidecar(
        snakemake.output.overlap,
        model=snakemake.wildcards.model,
        config={"reuse": section},
        seed=snakemake.params.seed,
    )
