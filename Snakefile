# circuit-repro: reproduce circuit-analysis papers on any Hugging Face causal LM.
# Everything is driven by config/config.yaml (science parameters) and
# config/models.yaml (model registry); see README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/papers/reuse.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
        reuse_outputs(),
        claims_outputs(),
