# circuit-repro: reproduce circuit-analysis papers on any Hugging Face causal LM.
# Everything is driven by config/config.yaml (science parameters) and
# config/models.yaml (model registry); see README.md. Papers come from the registry
# in circuit_repro.papers: each brings its own rule file.
import sys
from pathlib import Path

from snakemake.utils import min_version, update_config

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "lib"))
from circuit_repro.pipeline.config import ConfigError, read_config_file

# config/config.yaml is read here rather than by a `configfile:` directive, so that a
# syntax error names the file, line and column; --configfile and --config given on
# the command line (already in `config`) still take precedence.
try:
    DEFAULT_CONFIG = read_config_file(Path(workflow.basedir) / "config" / "config.yaml")
except ConfigError as error:
    sys.exit(str(error))
update_config(DEFAULT_CONFIG, config)
config.clear()
config.update(DEFAULT_CONFIG)


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
