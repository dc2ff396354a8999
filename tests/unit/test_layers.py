"""The library's layering (docs/architecture.md): imports only go downward, and the
modules the Snakefile imports on every run load no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from circuit_repro.paths import REPO_ROOT

LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def test_import_contracts_hold():
    """import-linter's contracts in pyproject.toml: pipeline/bench > papers > engine >
    models, tasks > provenance, validation > errors, paths; the glue imports no torch."""
    run = subprocess.run(
        [LINT_IMPORTS, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_workflow_glue_loads_no_torch_at_run_time():
    """The registry loads papers with importlib, which static analysis cannot follow:
    import what the Snakefile imports, in a fresh interpreter, and look."""
    code = (
        "import sys\n"
        "import circuit_repro.papers, circuit_repro.pipeline.config, "
        "circuit_repro.pipeline.targets, circuit_repro.pipeline.resources, "
        "circuit_repro.pipeline.rule_context\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'transformer_lens')]\n"
        "print(len(heavy), heavy[:3])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("0 "), run.stdout
