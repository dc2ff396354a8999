"""Adding a paper, worked end to end: a toy paper joins the workflow through the registry.

The toy paper measures one claim on a tiny random model: the mean IOI logit difference
logit(IO) - logit(S) lies above zero. Its files below are the whole of "adding a
paper" (README and ``circuit_repro.papers`` point here):

- ``workflow/lib/circuit_repro/papers/toy/__init__.py``: settings and ``PAPER``
  (torch-free: the Snakefile imports it);
- ``workflow/lib/circuit_repro/papers/toy/claims.yaml``: the claim, as data;
- ``workflow/lib/circuit_repro/papers/toy/analysis.py``: the science (runs the model,
  bootstrap CI, the claims table judged by the shared policy);
- ``workflow/rules/papers/toy.smk``: the rules;
- ``workflow/scripts/toy/analysis.py``, ``workflow/scripts/toy/claims.py``: thin
  scripts inside the rule context;
- ``notebooks/toy.ipynb``: the figure, from results only;
- ``workflow/report/toy_ld.rst``: the figure's caption in the report;
- one line in ``PAPER_MODULES`` (``workflow/lib/circuit_repro/papers/__init__.py``).

The test writes them into a copy of the workflow (never into the repository), checks
that nothing else in the copy differs from the repository, and runs Snakemake there:
the DAG, the merged claims table and the report pick the paper up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from test_workflow import WORKFLOW_FILES, copy_workflow, run_snakemake

from circuit_repro.papers import PAPERS
from circuit_repro.papers.claims import VERDICTS
from circuit_repro.pipeline.config import REPO_ROOT

pytestmark = pytest.mark.workflow

REGISTRY_FILE = "workflow/lib/circuit_repro/papers/__init__.py"
REGISTRY_LINE = '    "circuit_repro.papers.toy",\n'
MODEL = "tiny-llama"
CATEGORY = "Toy paper: IOI logit difference"

# --------------------------------------------------------------------- the toy paper

TOY_INIT = '''\
"""Toy paper: the IOI logit difference is above zero (the worked example of adding a paper).

One claim, one task, one figure. :mod:`.analysis` runs the model and measures the
claim; the verdict comes from the shared policy (:mod:`circuit_repro.papers.claims`).

This ``__init__`` is torch-free (the workflow imports it to build the DAG).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuit_repro.papers.spec import Paper, setting

TASK = "ioi"


@dataclass
class ToySettings:
    """The ``toy`` config section (defaults are the default run's values)."""

    n_prompts: int = setting(
        100, "IOI prompts scored (the first n of the task's prompts).", minimum=4
    )
    bootstrap_samples: int = setting(
        1000, "Bootstrap resamples (over prompts) for the logit difference's CI.", minimum=100
    )
    confidence: float = setting(
        0.95,
        "Coverage of the bootstrap confidence interval.",
        exclusiveMinimum=0.5,
        exclusiveMaximum=1,
    )
    seed: int = setting(0, "The run's seed (set from the top-level seed).", config=False)


PAPER = Paper(
    name="toy",
    title="A toy paper: the IOI logit difference",
    citation="worked example in tests/workflow/test_toy_paper.py",
    settings=ToySettings,
    tasks=lambda section: [TASK],
    figures=("ld",),
    claims_file=Path(__file__).with_name("claims.yaml"),
    presets={"quick": {"n_prompts": 8, "bootstrap_samples": 200}},
)
'''

TOY_CLAIMS_YAML = """\
# The toy paper's claim, as data; the verdict policy in circuit_repro.papers.claims
# judges it like every other paper's.
paper: toy
claims:
  - id: ld_positive
    text: On IOI prompts the indirect object's logit is above the subject's (mean LD > 0)
    kind: direction
    scope: behaviour
    paper_model: gpt2-small
    paper_value: 3.5
    source: "toy: an illustrative number for this example, not a citation"
    reason: >-
      the claim is the sign of the difference, not its size (other models' logit
      scales differ)
"""

TOY_ANALYSIS = '''\
"""The toy paper's analysis: the model's IOI logit difference, with a bootstrap CI.

:func:`logit_differences` runs the model (rule ``toy_analysis``); :func:`toy_claims`
measures the claim of ``claims.yaml`` and leaves the verdict to the shared policy
(rule ``toy_claims``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_repro.engine.behaviour import score_records
from circuit_repro.engine.stats import bootstrap_ci
from circuit_repro.models.load import load_model
from circuit_repro.papers.claims import Measurement, claims_table, load_claims
from circuit_repro.papers.toy import PAPER, TASK, ToySettings
from circuit_repro.tasks.records import TaskRecord


def logit_differences(
    model_dir: str | Path,
    records: Sequence[TaskRecord],
    settings: ToySettings,
    compute: Mapping[str, Any],
) -> pd.DataFrame:
    """Per-prompt logit(IO) - logit(S) at the last token, first ``n_prompts`` records."""
    model, tokenizer = load_model(model_dir, compute["device"], compute["dtype"])
    scores = score_records(
        model, tokenizer, records[: settings.n_prompts], batch_size=compute["batch_size"]
    )
    return scores[["id", "answer", "wrong_answer", "logit_diff"]]


def ld_measurement(scores: pd.DataFrame, settings: ToySettings) -> Measurement:
    """The mean logit difference and its percentile-bootstrap CI over prompts."""
    values = scores["logit_diff"].to_numpy(dtype=np.float64)
    low, high = bootstrap_ci(
        values, np.mean, settings.bootstrap_samples, settings.confidence, settings.seed
    )
    return Measurement(
        claim_id="ld_positive",
        value=float(values.mean()),
        ci_low=low,
        ci_high=high,
        n=len(values),
        note=f"{int((values > 0).sum())} of {len(values)} prompts have LD > 0",
        baseline_task=TASK,
    )


def toy_claims(
    model: str,
    scores: pd.DataFrame,
    baselines: Mapping[str, Mapping[str, Any]],
    settings: ToySettings,
) -> pd.DataFrame:
    """Rule ``toy_claims``: the claim measured and judged (one row)."""
    claims = load_claims(PAPER.claims_file)
    return claims_table(PAPER.name, model, claims, [ld_measurement(scores, settings)], baselines)
'''

TOY_RULES = """\
# Toy paper: the IOI logit difference is above zero (tests/workflow/test_toy_paper.py).
# The science is in circuit_repro.papers.toy; the scripts only read and write files.
from circuit_repro.pipeline.resources import resource_functions

TOY = config["toy"]


rule toy_analysis:
    input:
        model=lambda wildcards: prepared_model(wildcards.model),
        prompts="results/tasks/{model}/ioi.jsonl",
    output:
        scores="results/toy/{model}/logit_diff.csv",
    log:
        "logs/toy/{model}/analysis.log",
    benchmark:
        "benchmarks/toy/{model}/analysis.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    threads: MODEL_THREADS
    resources:
        **resource_functions("analysis", REGISTRY, config["compute"]["device"]),
    params:
        compute=config["compute"],
        toy=TOY,
        seed=config["seed"],
    script:
        "../../scripts/toy/analysis.py"


rule toy_claims:
    input:
        claims_file=PAPERS["toy"].claims_source,
        scores="results/toy/{model}/logit_diff.csv",
        baseline="results/tasks/{model}/baseline/ioi.json",
    output:
        claims="results/toy/{model}/claims.csv",
    log:
        "logs/toy/{model}/claims.log",
    benchmark:
        "benchmarks/toy/{model}/claims.tsv"
    group:
        "model_{model}"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("summary", REGISTRY, config["compute"]["device"]),
    params:
        toy=TOY,
        seed=config["seed"],
    script:
        "../../scripts/toy/claims.py"


rule toy_notebook:
    input:
        notebook="notebooks/toy.ipynb",
        scores="results/toy/{model}/logit_diff.csv",
        claims="results/toy/{model}/claims.csv",
    output:
        notebook="results/notebooks/toy/{model}.ipynb",
        ld_png=report(
            "results/figures/toy/{model}/ld.png",
            caption="../../report/toy_ld.rst",
            category="Toy paper: IOI logit difference",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "IOI logit difference"},
        ),
        ld_pdf="results/figures/toy/{model}/ld.pdf",
    log:
        "logs/notebooks/toy_{model}.log",
    benchmark:
        "benchmarks/notebooks/toy_{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        **resource_functions("notebook"),
    params:
        parameters=lambda wildcards, input, output: {
            "model": wildcards.model,
            "scores_path": input.scores,
            "claims_path": input.claims,
            "figures": {
                name: [output[f"{name}_png"], output[f"{name}_pdf"]]
                for name in PAPERS["toy"].figures
            },
        },
    script:
        "../../scripts/render_notebook.py"
"""

TOY_SCRIPT_ANALYSIS = '''\
"""Rule toy_analysis: the model's IOI logit difference per prompt."""

from pathlib import Path

from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.toy import ToySettings
from circuit_repro.papers.toy.analysis import logit_differences
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    settings = settings_from_config(ToySettings, ctx.params.toy, seed=ctx.params.seed)
    records = read_records(ctx.input.prompts)
    model_dir = Path(ctx.input.model).parent
    scores = logit_differences(model_dir, records, settings, ctx.params.compute)
    scores.to_csv(ctx.output.scores, index=False)
'''

TOY_SCRIPT_CLAIMS = '''\
"""Rule toy_claims: the paper's claim beside ours, with its verdict."""

import json
from pathlib import Path

import pandas as pd

from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.toy import TASK, ToySettings
from circuit_repro.papers.toy.analysis import toy_claims
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(ToySettings, ctx.params.toy, seed=ctx.params.seed)
    baselines = {TASK: json.loads(Path(ctx.input.baseline).read_text())}
    scores = pd.read_csv(ctx.input.scores)
    claims = toy_claims(ctx.wildcards.model, scores, baselines, settings)
    claims.to_csv(ctx.output.claims, index=False)
'''

TOY_CAPTION = """\
Toy paper (the worked example of adding a paper): the IOI logit difference
logit(IO) - logit(S) per prompt, with its mean and 95% bootstrap interval over prompts.
The claim is that the mean lies above zero.
"""

TOY_NOTEBOOK_CELLS = [
    (
        "markdown",
        """\
# Toy paper: is the IOI logit difference above zero?

Per prompt, logit(IO) - logit(S) at the final token (rule `toy_analysis`), with the
mean and its bootstrap CI from the claims table (rule `toy_claims`). This notebook only
reads results; it never runs a model.""",
    ),
    (
        "parameters",
        """\
# Parameters (papermill overrides these; the defaults work after a run with the toy paper).
model = "tiny-llama"
scores_path = "results/toy/tiny-llama/logit_diff.csv"
claims_path = "results/toy/tiny-llama/claims.csv"
figures = {"ld": ["results/figures/toy/tiny-llama/ld.png", "results/figures/toy/tiny-llama/ld.pdf"]}""",
    ),
    (
        "code",
        """\
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

scores = pd.read_csv(scores_path)
claim = pd.read_csv(claims_path).set_index("claim_id").loc["ld_positive"]
claim[["claim", "our_value", "ci_low", "ci_high", "n", "verdict", "rule"]]""",
    ),
    (
        "code",
        """\
fig, ax = plt.subplots(figsize=(6, 3.5))
positions = np.arange(len(scores))
ax.scatter(positions, scores["logit_diff"], alpha=0.6, label="prompt")
ax.axhline(claim["our_value"], color="black", label="mean")
ax.axhspan(claim["ci_low"], claim["ci_high"], color="black", alpha=0.15, label="95% CI")
ax.axhline(0, color="grey", linestyle="--", linewidth=1)
ax.set_xlabel("prompt")
ax.set_ylabel("logit(IO) - logit(S)")
ax.set_title(f"IOI logit difference, {model}: {claim['verdict']}")
ax.legend(loc="best", fontsize=8)
fig.tight_layout()
for path in figures["ld"]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")""",
    ),
]


def toy_notebook() -> str:
    """``notebooks/toy.ipynb``: the cells above, the parameters cell tagged for papermill."""
    cells = []
    for kind, source in TOY_NOTEBOOK_CELLS:
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            cells.append(cell)
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    return nbformat.writes(notebook) + "\n"


#: The toy paper's own files, relative to the workflow root.
TOY_FILES = {
    "workflow/lib/circuit_repro/papers/toy/__init__.py": TOY_INIT,
    "workflow/lib/circuit_repro/papers/toy/claims.yaml": TOY_CLAIMS_YAML,
    "workflow/lib/circuit_repro/papers/toy/analysis.py": TOY_ANALYSIS,
    "workflow/rules/papers/toy.smk": TOY_RULES,
    "workflow/scripts/toy/analysis.py": TOY_SCRIPT_ANALYSIS,
    "workflow/scripts/toy/claims.py": TOY_SCRIPT_CLAIMS,
    "workflow/report/toy_ld.rst": TOY_CAPTION,
    "notebooks/toy.ipynb": toy_notebook(),
}


def add_toy_paper(root: Path) -> None:
    """Write the toy paper's files under ``root`` and register it (one line)."""
    for relative, text in TOY_FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    registry = root / REGISTRY_FILE
    source = registry.read_text()
    closing = "\n)\n"
    start = source.index("PAPER_MODULES")
    end = source.index(closing, start) + 1
    registry.write_text(source[:end] + REGISTRY_LINE + source[end:])


# --------------------------------------------------------------------------- helpers


def tree_digest(root: Path, skip: set[str] = frozenset(), drop_line: str | None = None) -> dict:
    """``{relative path: sha256}`` of the workflow files under ``root`` (no caches).

    ``skip`` leaves out files; ``drop_line`` is removed once from the registry file.
    """
    digest = {}
    for name in WORKFLOW_FILES:
        top = root / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            relative = path.relative_to(root).as_posix()
            if relative in skip or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            data = path.read_bytes()
            if drop_line is not None and relative == REGISTRY_FILE:
                assert data.count(drop_line.encode()) == 1, "the registry line is not there once"
                data = data.replace(drop_line.encode(), b"", 1)
            digest[relative] = hashlib.sha256(data).hexdigest()
    return digest


def run_toy_snakemake(*args, cwd: Path, timeout: int = 300):
    """Snakemake in the copy, its scripts importing the copy's library (PYTHONPATH comes
    before the editable install's path entry)."""
    return run_snakemake(
        *args, cwd=cwd, env={"PYTHONPATH": str(cwd / "workflow" / "lib")}, timeout=timeout
    )


def toy_config(workdir: Path) -> Path:
    """A run of the toy paper alone: tiny-llama, the IOI task only, the quick preset."""
    tasks = yaml.safe_load((REPO_ROOT / "config/config.yaml").read_text())["tasks"]
    config = {
        "models": [MODEL],
        "tasks": {name: {"enabled": False} for name in tasks if name != "ioi"},
        "baseline": {"bootstrap_samples": 200},
        # Every registered paper off: the toy paper runs alone.
        **{name: {"enabled": False} for name in PAPERS},
        "preset": "quick",
    }
    config["tasks"]["ioi"] = {"n_prompts": 8}
    path = workdir / "toy-run.yaml"  # outside the workflow files compared with the repo
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def report_data(path: Path) -> tuple[dict, dict]:
    """The ``results`` and ``categories`` that Snakemake's HTML report embeds as JSON.

    ``results``: ``{path: {"caption", "labels", "job_properties", "data_uri", ...}}``,
    each file's content base64-encoded in its ``data_uri``; ``categories``:
    ``{category: {subcategory: [paths]}}``.
    """
    html = path.read_text()
    found = {}
    for name in ("results", "categories"):
        match = re.search(rf"var {name} = (\{{.*?\}});\n", html, re.S)
        assert match, f"no `var {name}` in the report (has Snakemake's report format changed?)"
        found[name] = json.loads(match.group(1))
    return found["results"], found["categories"]


def embedded(entry: dict) -> bytes:
    """A report entry's file content, decoded from its ``data:...;base64,`` URI."""
    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1])


# ------------------------------------------------------------------------------ test


@pytest.fixture(scope="module")
def toy_workflow(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("toy"))
    add_toy_paper(workdir)
    return workdir, toy_config(workdir)


def test_toy_paper_needs_no_edit_to_shared_files(toy_workflow):
    """Only the toy paper's own files and one registry line differ from the repository."""
    workdir, _ = toy_workflow
    for relative in TOY_FILES:
        assert not (REPO_ROOT / relative).exists(), f"{relative} is in the repository"
    ours = tree_digest(workdir, skip=set(TOY_FILES), drop_line=REGISTRY_LINE)
    theirs = tree_digest(REPO_ROOT)
    changed = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
    assert not changed, changed
    assert ours.keys() == theirs.keys(), sorted(ours.keys() ^ theirs.keys())


def test_toy_paper_joins_dag_claims_table_and_report(toy_workflow):
    workdir, config = toy_workflow

    # (a) The DAG: the toy rules once each (one model), and the merged claims table.
    plan = run_toy_snakemake("-n", "--quiet", "rules", "--configfile", str(config), cwd=workdir)
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = {
        line.split()[0]: line.split()[1]
        for line in plan.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    for rule in ("toy_analysis", "toy_claims", "toy_notebook", "claims_table"):
        assert counts.get(rule) == "1", (rule, plan.stdout)
    assert not any(
        rule.startswith(tuple(f"{name}_" for name in PAPERS)) or rule == "train_series"
        for rule in counts
    ), plan.stdout

    # (b) A real run: the tiny model scores the IOI prompts; the claim gets a verdict.
    run = run_toy_snakemake("--configfile", str(config), cwd=workdir)
    assert run.returncode == 0, run.stderr[-4000:]

    merged = pd.read_csv(workdir / "results/claims.csv")
    assert list(merged["paper"]) == ["toy"], merged
    row = merged.iloc[0]
    assert (row["model"], row["claim_id"]) == (MODEL, "ld_positive")
    assert row["paper_model"] == "gpt2-small" and row["paper_value"] == 3.5
    assert row["verdict"] in VERDICTS
    assert row["n"] == 8
    assert row["ci_low"] <= row["our_value"] <= row["ci_high"]
    # The direction policy, restated: the CI's side of zero decides.
    expected = (
        "reproduced"
        if row["ci_low"] > 0
        else "not reproduced"
        if row["ci_high"] < 0
        else "inconclusive"
    )
    assert row["verdict"] == expected, row.to_dict()
    assert row["rule"].startswith("direction: the 95% CI")
    assert math.isfinite(row["baseline_accuracy"])
    assert "<h2>toy</h2>" in (workdir / "results/claims.html").read_text()

    claims = workdir / f"results/toy/{MODEL}/claims.csv"
    assert pd.read_csv(claims).equals(pd.read_csv(workdir / "results/claims.csv"))
    sidecar = json.loads(claims.with_name("claims.csv.provenance.json").read_text())
    assert (sidecar["rule"], sidecar["model"], sidecar["seed"]) == ("toy_claims", MODEL, 0)
    scores = pd.read_csv(workdir / f"results/toy/{MODEL}/logit_diff.csv")
    assert len(scores) == 8 and scores["logit_diff"].notna().all()
    assert scores["logit_diff"].mean() == pytest.approx(row["our_value"])
    for ext in ("png", "pdf"):
        figure = workdir / f"results/figures/toy/{MODEL}/ld.{ext}"
        assert figure.stat().st_size > 1000, figure
    executed = json.loads((workdir / f"results/notebooks/toy/{MODEL}.ipynb").read_text())
    injected = [
        cell
        for cell in executed["cells"]
        if "injected-parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert injected and MODEL in "".join(injected[0]["source"])
    for step in ("analysis", "claims"):
        assert (workdir / f"benchmarks/toy/{MODEL}/{step}.tsv").exists(), step
        log = (workdir / f"logs/toy/{MODEL}/{step}.log").read_text()
        assert log.startswith(f"rule toy_{step}, attempt 1"), log[:500]

    # (c) The report: the toy figure under its category, and the claims page with its row.
    report = run_toy_snakemake(
        "--configfile", str(config), "--report", "results/snakemake_report.html", cwd=workdir
    )
    assert report.returncode == 0, report.stderr[-3000:]
    results, categories = report_data(workdir / "results/snakemake_report.html")
    figure = f"results/figures/toy/{MODEL}/ld.png"
    assert categories[CATEGORY] == {MODEL: [figure]}, categories
    entry = results[figure]
    assert entry["job_properties"]["rule"] == "toy_notebook"
    assert "worked example of adding a paper" in entry["caption"]
    assert embedded(entry) == (workdir / figure).read_bytes()
    page = embedded(results["results/claims.html"]).decode()
    assert "<h2>toy</h2>" in page and "On IOI prompts the indirect object" in page
    # (d) Our own report has the toy paper's claims and figure, with no edit to it.
    ours = (workdir / "results/report.html").read_text()
    assert "On IOI prompts the indirect object" in ours
    assert f"id='toy-{MODEL}-ld'" in ours and "worked example of adding a paper" in ours
