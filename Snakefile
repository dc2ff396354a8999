# circuit-repro: reproduce circuit-analysis papers on any Hugging Face causal LM.
# Everything is driven by config/config.yaml (science parameters) and
# config/models.yaml (model registry); see README.md. Papers come from the registry
# in circuit_repro.papers: each brings its own rule file.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/report.smk"


for paper in PAPERS.values():

    include: paper.rules_file


rule all:
    default_target: True
    input:
        all_targets(config, TASKS),
