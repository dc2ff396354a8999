"""The Snakemake workflow: DAG, bad input, and the quick preset end to end.

Runs that write results use a copy of the workflow in a temporary folder, so the
user's results/ and resources/ are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from circuit_repro.models.registry import load_registry, series_members
from circuit_repro.pipeline.config import REPO_ROOT, load_config

pytestmark = pytest.mark.workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_FILES = ("Snakefile", "config", "workflow", "notebooks")


def run_snakemake(*args, cwd, env=None, timeout=600):
    return subprocess.run(
        [SNAKEMAKE, "--cores", "2", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def copy_workflow(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick preset run once, end to end (with results/report.html), then Snakemake's
    own report."""
    workdir = copy_workflow(tmp_path_factory.mktemp("quick"))
    run = run_snakemake("--configfile", "config/presets/quick.yaml", cwd=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    report = run_snakemake(
        "--configfile",
        "config/presets/quick.yaml",
        "--report",
        "results/snakemake_report.html",
        cwd=workdir,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    return workdir


def test_dry_run_on_the_default_config(tmp_path):
    """From a clean folder, the default config plans every rule once per model."""
    workdir = copy_workflow(tmp_path)
    run = run_snakemake("-n", "--quiet", "rules", cwd=workdir)
    assert run.returncode == 0, run.stderr
    counts = dict(
        line.split()[:2]
        for line in run.stdout.splitlines()
        if line.split()[-1:] != ["count"] and len(line.split()) == 2 and line.split()[1].isdigit()
    )
    config = load_config(REPO_ROOT / "config/config.yaml")  # paper sections filled in
    n_models, n_tasks = len(config["models"]), len(config["tasks"])
    assert n_tasks == 9
    # The training-dynamics paper's checkpoint series: one training job per trained
    # series, each checkpoint a model; the post-trained ones get the task built.
    registry = load_registry()
    series = config["sparks"]["series"]
    members = [m for s in series for m in series_members(registry, s)]
    post_trained = [s for s in series if registry[s]["training"]["recipe"] != "induction"]
    with_task = [m for s in post_trained for m in series_members(registry, s)]
    assert counts.get("train_series") == str(len(series)), run.stdout
    for rule in ("sparks_series", "sparks_claims", "sparks_notebook"):
        assert counts.get(rule) == str(len(series)), (rule, run.stdout)
    assert counts.get("sparks_checkpoint") == str(len(members)), run.stdout
    assert counts.get("sparks_interventions") == str(len(post_trained)), run.stdout
    # One baseline job scores every task of a model (one model load).
    for rule in ("baseline", "baseline_table"):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    for rule in ("fetch_model", "prepare_model"):
        assert counts.get(rule) == str(n_models + len(members)), (rule, run.stdout)
    assert counts.get("build_task") == str(n_models * n_tasks + len(with_task)), run.stdout
    for rule in ("ioi_baseline_notebook", "task_baselines_notebook", "baseline_summary"):
        assert counts.get(rule) == "1", (rule, run.stdout)
    # Circuit reuse: one job per model each (the circuit job runs every task).
    for rule in (
        "reuse_circuit",
        "reuse_overlap",
        "reuse_intervention",
        "reuse_claims",
        "reuse_notebook",
    ):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    # The subspace illusion: IOI and facts jobs per model.
    for rule in (
        "subspace_ioi",
        "subspace_facts",
        "subspace_claims",
        "subspace_notebook",
    ):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    # The ICL circuit: one job per model and ICL task, then claims and notebook per model.
    n_icl_tasks = len(config["icl"]["tasks"])
    assert counts.get("icl_task") == str(n_models * n_icl_tasks), run.stdout
    for rule in ("icl_claims", "icl_notebook"):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    # Recall vs reasoning: one analysis job per model.
    for rule in ("recall_analysis", "recall_claims", "recall_notebook"):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    # Correct-letter heads: one unit per model (its post-training series' final
    # checkpoint where it has one), each job once per unit.
    for rule in ("mcqa_analysis", "mcqa_checkpoints", "mcqa_claims", "mcqa_notebook"):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    # Transcoders: per model, the layer, one training job for the whole sweep, then
    # evaluation, greater-than, claims and notebook.
    for rule in (
        "transcoders_layer",
        "transcoders_train",
        "transcoders_evaluate",
        "transcoders_greater_than",
        "transcoders_claims",
        "transcoders_notebook",
    ):
        assert counts.get(rule) == str(n_models), (rule, run.stdout)
    assert counts.get("claims_table") == "1", run.stdout


def test_reuse_figure_targets_resolve_from_a_clean_results_folder(tmp_path):
    workdir = copy_workflow(tmp_path)
    targets = [
        f"results/figures/reuse/smollm2-135m/{name}.png" for name in ("overlap", "intervention")
    ]
    run = run_snakemake(*targets, "-n", "--quiet", "rules", cwd=workdir)
    assert run.returncode == 0, run.stderr
    for rule in ("prepare_model", "build_task", "reuse_circuit", "reuse_notebook"):
        assert rule in run.stdout, rule


def test_lint_is_clean():
    run = subprocess.run(
        [SNAKEMAKE, "--lint", "--cores", "1"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"modelz": ["smollm2-135m"]}, "unknown key 'modelz'"),
        ({"seed": "zero"}, "seed = 'zero' has the wrong type"),
        ({"models": ["no-such-model"]}, "models[0] = 'no-such-model' is not in config/models.yaml"),
        ({"compute": {"dtype": "float8"}}, "compute.dtype = 'float8' is not allowed"),
        (
            {"tasks": {"colored_objects": {"enabled": False}}},
            "reuse needs task 'colored_objects', which is disabled",
        ),
    ],
)
def test_bad_config_exits_with_one_line(override, expected, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(override))
    run = run_snakemake("-n", "--configfile", str(config), cwd=REPO_ROOT)
    assert run.returncode != 0
    output = run.stdout + run.stderr
    # Snakemake may print its own notice that --configfile extends the default config;
    # our error is the single line after it, with no traceback.
    lines = [line for line in output.splitlines() if line.strip() and "is extended by" not in line]
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert "Traceback" not in output


def test_offline_hub_model_fails_in_its_fetch_rule_with_one_line(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = tmp_path / "hf.yaml"
    config.write_text(yaml.safe_dump({"models": ["gpt2"]}))
    # The prepared model as the target: a whole run would also start the model-free
    # jobs (the induction series' training) beside the fetch, and wait for them.
    run = run_snakemake(
        "--configfile",
        str(config),
        "--",
        "resources/models/gpt2/provenance.json",
        cwd=workdir,
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty")},
        timeout=120,
    )
    assert run.returncode != 0
    assert "rule fetch_model" in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, run.stderr[-2000:]
    assert "model 'gpt2' (openai-community/gpt2@main) is not in the Hugging Face cache" in errors[0]
    assert "Traceback" not in run.stderr


def test_quick_preset_outputs(quick_run):
    figures = quick_run / "results/figures/ioi_baseline"
    for name in ("ioi_baseline.png", "ioi_baseline.pdf"):
        assert (figures / name).stat().st_size > 1000, name
    table = pd.read_csv(quick_run / "results/tasks/tiny-llama/baseline.csv")
    quick = yaml.safe_load((quick_run / "config/presets/quick.yaml").read_text())["tasks"]
    enabled = sorted(name for name, settings in quick.items() if settings.get("enabled", True))
    assert list(table["task"]) == enabled
    assert (table["n"] == 16).all()
    assert table["accuracy"].between(0, 1).all()
    assert (table["accuracy_ci_low"] <= table["accuracy"]).all()
    assert (table["accuracy"] <= table["accuracy_ci_high"]).all()
    # Random weights: every task is at or near chance, and the summary says so.
    summary = (quick_run / "results/tasks/baseline_summary.html").read_text()
    for task in enabled:
        if table.set_index("task").loc[task, "near_chance"]:
            assert f"tiny-llama is at or near chance on {task}" in summary
    for figure in ("task_baselines.png", "task_baselines.pdf"):
        assert (quick_run / "results/figures/task_baselines" / figure).stat().st_size > 1000
    sidecar = quick_run / "results/tasks/tiny-llama/baseline/ioi.csv.provenance.json"
    provenance = json.loads(sidecar.read_text())
    assert provenance["seed"] == 0 and provenance["model"] == "tiny-llama"
    for rule_benchmark in ("models/tiny-llama/prepare.tsv", "tasks/tiny-llama/baseline.tsv"):
        assert (quick_run / "benchmarks" / rule_benchmark).exists()


def test_quick_preset_snakemake_report_has_the_figure(quick_run):
    report = (quick_run / "results/snakemake_report.html").read_text()
    for item in ("ioi_baseline.png", "task_baselines.png", "baseline_summary.html"):
        assert item in report, item
    assert "Indirect object identification" in report


def rule_counts(plan_stdout: str) -> dict[str, int]:
    """Jobs per rule from ``snakemake -n --quiet rules``."""
    return {
        line.split()[0]: int(line.split()[1])
        for line in plan_stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def test_quick_preset_report_opens_on_every_claim_and_shows_every_figure(quick_run):
    page = (quick_run / "results/report.html").read_text()
    claims = pd.read_csv(quick_run / "results/claims.csv")
    figures = list((quick_run / "results/figures").rglob("*.png"))
    body = page[page.index("<tbody>") : page.index("</tbody>")]
    assert body.count("<tr>") == len(claims)
    assert page.index("id='claims-table'") < page.index("<figure")
    assert page.count("<img src='data:image/png;base64,") == len(figures)
    for paper in claims["paper"].unique():
        assert f"<section id='paper-{paper}'>" in page, paper


def test_editing_one_papers_notebook_reruns_only_its_figures(quick_run, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(quick_run, edited, symlinks=True)
    notebook = edited / "notebooks/reuse.ipynb"
    content = json.loads(notebook.read_text())
    content["cells"][-1]["source"] = [*content["cells"][-1]["source"], "\n# edited"]
    notebook.write_text(json.dumps(content, indent=1))
    plan = run_snakemake(
        "-n", "--quiet", "rules", "--configfile", "config/presets/quick.yaml", cwd=edited
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = rule_counts(plan.stdout)
    # The paper's notebook job (its figures), then the report that shows them.
    assert counts == {"reuse_notebook": 1, "report": 1, "all": 1, "total": 3}, plan.stdout


def test_the_report_shows_the_claims_and_every_image_in_a_browser(quick_run, tmp_path):
    """Headless Chromium (Debian's package): the first screen shows the claims table
    (its verdict colours are in the screenshot) and every image decoded."""
    import numpy as np
    from PIL import Image

    from circuit_repro.papers.claims import VERDICT_COLOURS

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        assert not os.environ.get("CI"), "CI installs chromium (.ci/run)"
        pytest.skip("chromium is not installed (apt-get install chromium)")
    url = (quick_run / "results/report.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--window-size=1280,900", "--virtual-time-budget=10000"]
    shot = tmp_path / "report.png"
    taken = subprocess.run(
        [*flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in VERDICT_COLOURS.values()}
    seen = {tuple(p) for p in np.unique(pixels, axis=0)}
    assert colours & seen, "no verdict colour on the first screen: the claims table is not visible"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_figures = len(list((quick_run / "results/figures").rglob("*.png")))
    assert f'data-images-loaded="{n_figures}/{n_figures}"' in dom.stdout


def test_quick_preset_notebook_was_parameterised(quick_run):
    notebook = json.loads((quick_run / "results/notebooks/ioi_baseline.ipynb").read_text())
    injected = [
        cell
        for cell in notebook["cells"]
        if "injected-parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert injected and "tiny-llama" in "".join(injected[0]["source"])


def test_second_run_has_nothing_to_do(quick_run):
    run = run_snakemake("-n", "--configfile", "config/presets/quick.yaml", cwd=quick_run)
    assert run.returncode == 0
    assert "Nothing to be done" in run.stdout + run.stderr


def test_changing_a_parameter_reruns_only_what_depends_on_it(quick_run, tmp_path):
    config = yaml.safe_load((quick_run / "config/presets/quick.yaml").read_text())
    config["baseline"]["bootstrap_samples"] = 300
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    run = run_snakemake("-n", "--configfile", str(changed), "--quiet", "rules", cwd=quick_run)
    assert run.returncode == 0, run.stderr
    assert "baseline" in run.stdout
    assert "prepare_model" not in run.stdout and "build_task" not in run.stdout


def test_a_changed_task_is_rescored_alone(quick_run, tmp_path):
    """The baseline job scores every task of a model at once, but a task whose prompts
    did not change is read back from the memo: only the changed task is scored, and
    the other tasks' outputs are byte for byte the same."""
    workdir = tmp_path / "copy"
    shutil.copytree(quick_run, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "config/presets/quick.yaml").read_text())
    config["tasks"]["mcqa"]["n_prompts"] = 12
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    target = "results/tasks/tiny-llama/baseline/mcqa.csv"
    # Targets go first: --configfile takes every argument after it.
    run = run_snakemake(target, "--configfile", str(changed), cwd=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (workdir / "logs/tasks/tiny-llama/baseline.log").read_text()
    assert "scored ['mcqa']" in log
    assert len(pd.read_csv(workdir / target)) == 12
    unchanged = "results/tasks/tiny-llama/baseline/ioi.csv"
    assert (workdir / unchanged).read_bytes() == (quick_run / unchanged).read_bytes()


def test_a_changed_control_task_reruns_its_own_circuit_alone(quick_run, tmp_path):
    """The reuse circuit job runs every task, but only the changed task's path
    patching is recomputed; the intervention, whose inputs come out byte for byte the
    same, is read back from its memo without loading the model."""
    workdir = tmp_path / "copy"
    shutil.copytree(quick_run, workdir, symlinks=True)
    config = yaml.safe_load((workdir / "config/presets/quick.yaml").read_text())
    config["tasks"]["facts"]["n_prompts"] = 12
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    targets = ["results/reuse/tiny-llama/intervention.csv", "results/reuse/tiny-llama/overlap.csv"]
    run = run_snakemake(*targets, "--configfile", str(changed), cwd=workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = workdir / "logs/reuse/tiny-llama"
    assert "path patching ran for ['facts']" in (logs / "circuit.log").read_text()
    intervention_log = (logs / "intervention.log").read_text()
    assert "read the results back" in intervention_log
    assert '"model_load"' not in intervention_log  # the model was never loaded
    for unchanged in ("path_patching/ioi.csv", "heads/colored_objects.csv", "intervention.csv"):
        path = f"results/reuse/tiny-llama/{unchanged}"
        assert (workdir / path).read_bytes() == (quick_run / path).read_bytes(), unchanged


def test_quick_preset_reuse_outputs(quick_run):
    """The reuse paper's rules ran from a clean results/ folder: claims, figures, benchmarks."""
    from circuit_repro.papers.reuse import PAPER

    claims = paper_claims_and_figures(quick_run, PAPER)
    assert {"overlap", "intervention_all", "intervention_vs_path_patching"} <= set(
        claims["claim_id"]
    )
    assert {"control_overlap_greater_than", "control_overlap_facts"} <= set(claims["claim_id"])
    merged = pd.read_csv(quick_run / "results/claims.csv")
    assert len(merged[merged["paper"] == "reuse"]) == len(claims)
    for rule_benchmark in ("circuit.tsv", "overlap.tsv", "intervention.tsv"):
        assert (quick_run / "benchmarks/reuse/tiny-llama" / rule_benchmark).exists()
    report = (quick_run / "results/snakemake_report.html").read_text()
    assert "claims.html" in report and "intervention.png" in report


def paper_claims_and_figures(quick_run, paper, unit: str = "tiny-llama") -> pd.DataFrame:
    """Check a paper's claims table (columns, verdicts) and every figure in both formats
    on one result unit of the quick run (its model); the claims for further checks."""
    from circuit_repro.papers.claims import CLAIM_COLUMNS, VERDICTS

    claims = pd.read_csv(quick_run / f"results/{paper.name}/{unit}/claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    assert set(claims["verdict"]) <= set(VERDICTS)
    for name in paper.figures:
        for extension in ("png", "pdf"):
            path = quick_run / f"results/figures/{paper.name}/{unit}/{name}.{extension}"
            assert path.stat().st_size > 1000, path
    return claims


def test_quick_preset_icl_outputs(quick_run):
    """The ICL paper's rules ran: every table per task, knockouts of every step in every
    range with a control, claims for the quick preset's task, figures, benchmarks."""
    from circuit_repro.papers.icl import PAPER, STEPS
    from circuit_repro.papers.icl.run import TABLES

    model_dir = quick_run / "results/icl/tiny-llama"
    for name in TABLES:
        assert (model_dir / "icl_sentiment" / f"{name}.csv").stat().st_size > 0, name
    knockouts = pd.read_csv(model_dir / "icl_sentiment/knockouts.csv")
    assert set(knockouts["step"]) == set(STEPS)
    assert len(knockouts) == len(STEPS) * 2  # the quick preset's two ranges of layers
    curve = pd.read_csv(model_dir / "icl_sentiment/curve.csv")
    assert list(curve["k"]) == [0, 1, 2]
    assert not curve["analysed"].any()  # the task's k = 4 lies beyond the quick k_max
    claims = paper_claims_and_figures(quick_run, PAPER)
    assert len(claims) == 7 and all(claims["claim_id"].str.endswith("_sentiment"))
    assert (quick_run / "benchmarks/icl/tiny-llama/icl_sentiment.tsv").exists()


def test_quick_preset_subspace_outputs(quick_run):
    """The subspace paper's rules ran: Table 1 with every site and intervention, the
    kernel part inert, claims for every entry of the claims file, figures, benchmarks."""
    from circuit_repro.papers.claims import load_claims
    from circuit_repro.papers.subspace import PAPER

    model_dir = quick_run / "results/subspace/tiny-llama"
    table = pd.read_csv(model_dir / "table.csv")
    assert set(table["site"]) == {"clean", "mlp", "resid", "control_mlp"}
    kernel = table[(table["site"] == "mlp") & (table["intervention"] == "nullspace")]
    assert abs(float(kernel["fldd"].iloc[0])) < 0.5
    claims = paper_claims_and_figures(quick_run, PAPER)
    assert set(claims["claim_id"]) == set(load_claims(PAPER.claims_file))
    merged = pd.read_csv(quick_run / "results/claims.csv")
    assert len(merged[merged["paper"] == "subspace"]) == len(claims)
    for rule_benchmark in ("ioi.tsv", "facts.tsv", "claims.tsv"):
        assert (quick_run / "benchmarks/subspace/tiny-llama" / rule_benchmark).exists()


def test_quick_preset_recall_outputs(quick_run):
    """The recall paper's rules ran: both circuits at every level, each ablated with its
    size-matched random sets on held-out pairs only, the 2x2 table, claims for every
    entry of the claims file, figures, benchmarks."""
    from circuit_repro.papers.claims import load_claims
    from circuit_repro.papers.recall import FAMILIES, LEVELS, PAPER
    from circuit_repro.papers.recall.analysis import TABLES

    model_dir = quick_run / "results/recall/tiny-llama"
    for name in TABLES:
        assert (model_dir / f"{name}.csv").stat().st_size > 0, name
    circuits = pd.read_csv(model_dir / "circuits.csv")
    assert set(zip(circuits["family"], circuits["level"], strict=True)) == {
        (f, level) for f in FAMILIES for level in LEVELS
    }
    ablations = pd.read_csv(model_dir / "ablations.csv")
    quick = PAPER.presets["quick"]
    assert ablations["pair_id"].nunique() == quick["ablation_pairs"]
    for (level, ablated), rows in ablations.groupby(["level", "ablated"]):
        family = ablated.removeprefix("random_")
        if family in FAMILIES:
            in_circuit = circuits[(circuits["level"] == level) & (circuits["family"] == family)]
            assert set(rows["size"]) == {len(in_circuit)}, (level, ablated)
        if ablated.startswith("random_"):
            assert rows["draw"].nunique() == quick["random_draws"]
    table = pd.read_csv(model_dir / "table.csv")
    for level in LEVELS:  # ablate recall / reasoning x measure recall / reasoning
        rows = table[table["level"] == level]
        assert set(zip(rows["ablated"], rows["measured"], strict=True)) >= {
            (a, m) for a in FAMILIES for m in FAMILIES
        }
    claims = paper_claims_and_figures(quick_run, PAPER)
    assert set(claims["claim_id"]) == set(load_claims(PAPER.claims_file))
    for rule_benchmark in ("analysis.tsv", "claims.tsv"):
        assert (quick_run / "benchmarks/recall/tiny-llama" / rule_benchmark).exists()


def test_quick_preset_sparks_outputs(quick_run):
    """The training-dynamics paper's rules ran on both quick series: training with its
    loss curve, one job per checkpoint, the series tables, interventions for the
    post-trained series, claims and figures."""
    from circuit_repro.models.registry import load_registry, series_members
    from circuit_repro.papers.sparks import PAPER

    registry = load_registry()
    for series in PAPER.presets["quick"]["series"]:
        losses = pd.read_csv(quick_run / f"results/training/{series}/losses.csv")
        assert list(losses["step"]) == list(range(1, registry[series]["training"]["steps"] + 1))
        for member in series_members(registry, series):
            summary = json.loads((quick_run / f"results/sparks/{member}/summary.json").read_text())
            assert summary["step"] == registry[member]["step"]
            assert (quick_run / f"resources/models/{member}/provenance.json").exists()
        checkpoints = pd.read_csv(quick_run / f"results/sparks/{series}/checkpoints.csv")
        assert len(checkpoints) == len(series_members(registry, series))
        claims = pd.read_csv(quick_run / f"results/sparks/{series}/claims.csv")
        for name in PAPER.figures:
            for extension in ("png", "pdf"):
                path = quick_run / f"results/figures/sparks/{series}/{name}.{extension}"
                assert path.stat().st_size > 1000, path
        if registry[series]["training"]["recipe"] == "induction":
            assert list(claims["claim_id"]) == ["induction_with_loss_drop"]
        else:
            assert "emergent_heads" in set(claims["claim_id"])
            assert (quick_run / f"results/sparks/{series}/intervention_summary.csv").exists()
            assert "accuracy" in checkpoints
    merged = pd.read_csv(quick_run / "results/claims.csv")
    assert set(PAPER.presets["quick"]["series"]) <= set(merged["model"])


def test_quick_preset_mcqa_outputs(quick_run):
    """The MCQA paper ran on the final checkpoint of the quick post-training series in
    the tiny model's place: every table, the top heads' compression curve from rank 0 to
    d_head, every label mutation, the heads at each checkpoint, claims gated on the
    analysed prompts (a model at chance: inconclusive), figures and benchmarks."""
    from circuit_repro.models.registry import load_registry, series_members
    from circuit_repro.papers.mcqa import PAPER, TABLES
    from circuit_repro.papers.mcqa.analysis import MUTATIONS

    quick = PAPER.presets["quick"]
    series = quick["post_trained"]["tiny-llama"]
    registry = load_registry()
    members = series_members(registry, series)
    unit = members[-1]
    architecture = registry[unit]["architecture"]
    unit_dir = quick_run / "results/mcqa" / unit
    for name in TABLES:
        assert (unit_dir / f"{name}.csv").stat().st_size > 0, name
    summary = json.loads((unit_dir / "summary.json").read_text())
    assert summary["n_prompts"] == quick["prompts"] == len(summary["correct"])
    assert len(summary["top_heads"]) == quick["top_heads"]
    compression = pd.read_csv(unit_dir / "compression.csv")
    for _, curve in compression.groupby(["layer", "head"]):
        d_head = architecture["d_model"] // architecture["n_heads"]
        assert curve["rank"].min() == 0 and curve["rank"].max() == d_head
    mutations = pd.read_csv(unit_dir / "mutations.csv")
    assert set(mutations["labels"]) == {"clean", *MUTATIONS}
    checkpoints = pd.read_csv(unit_dir / "checkpoints.csv")
    assert checkpoints["step"].nunique() == len(members)
    dla = pd.read_csv(unit_dir / "dla.csv")
    assert dla["dla"].sum() == pytest.approx(summary["logit_diff"], abs=1e-4)
    claims = paper_claims_and_figures(quick_run, PAPER, unit)
    assert len(claims) == 4
    if summary["accuracy"] < 0.5:
        assert claims["verdict"].str.startswith("inconclusive").all(), claims
    for rule_benchmark in ("analysis.tsv", "checkpoints.tsv", "claims.tsv"):
        assert (quick_run / "benchmarks/mcqa" / unit / rule_benchmark).exists()


def test_quick_preset_transcoders_outputs(quick_run):
    """The transcoders paper ran on the tiny model: the chosen layer, every dictionary of
    the sweep trained and saved (both kinds at every L1, and the layer before), their
    evaluation, the top-k curves with random controls, the connections, the inspected
    features, claims, figures and the features page, benchmarks."""
    from circuit_repro.engine.dictionary import load_dictionary
    from circuit_repro.papers.transcoders import PAPER, TABLES

    quick = PAPER.presets["quick"]
    model_dir = quick_run / "results/transcoders/tiny-llama"
    for name in TABLES:
        assert (model_dir / f"{name}.csv").stat().st_size > 0, name
    layer = json.loads((model_dir / "layer.json").read_text())["layer"]
    layers = pd.read_csv(model_dir / "layers.csv")
    assert layer == int(layers[layers["layer"] >= 1].sort_values("effect")["layer"].iloc[-1])
    saved = sorted(p.name for p in (model_dir / "dictionaries").iterdir() if p.is_dir())
    expected = [
        f"{kind}_L{layer}_l1_{l1:g}" for kind in ("sae", "transcoder") for l1 in quick["l1"]
    ]
    assert set(expected) <= set(saved) and f"transcoder_L{layer - 1}_l1_{quick['l1'][1]:g}" in saved
    transcoder = load_dictionary(model_dir / "dictionaries" / expected[-1])
    assert transcoder.W_dec.shape == (4 * 64, 64)  # expansion x d_model of tiny-llama
    sweep = pd.read_csv(model_dir / "sweep.csv")
    assert sorted(sweep["l1"]) == sorted(quick["l1"] * 2)
    corpus = json.loads((model_dir / "corpus.json").read_text())
    assert corpus["train_tokens"] >= quick["train_tokens"] and corpus["sha256"]
    top_k = pd.read_csv(model_dir / "top_k.csv")
    assert set(top_k["k"][top_k["selection"] == "top"]) == set(quick["top_k"])
    prompts = pd.read_csv(model_dir / "top_k_prompts.csv")
    assert prompts[prompts["selection"] == "random"]["draw"].nunique() == quick["random_draws"]
    features = pd.read_csv(model_dir / "features.csv")
    assert features["feature"].nunique() == quick["inspected_features"]
    claims = paper_claims_and_figures(quick_run, PAPER)
    assert len(claims) == 4
    html = (quick_run / "results/figures/transcoders/tiny-llama/features.html").read_text()
    assert "<table" in html
    for rule_benchmark in ("layer", "train", "evaluate", "greater_than", "claims"):
        assert (quick_run / f"benchmarks/transcoders/tiny-llama/{rule_benchmark}.tsv").exists()


#: One analysis result of every paper (and the trained dictionaries and series behind
#: two of them): removed from a copy of the quick run and made again.
RERUN_RESULTS = (
    "results/reuse/tiny-llama/path_patching/ioi.csv",
    "results/icl/tiny-llama/icl_sentiment/heads.csv",
    "results/subspace/tiny-llama/training.csv",
    "results/recall/tiny-llama/heads.csv",
    "results/sparks/tiny-induction-quick@step300/edges.csv",
    "results/mcqa/tiny-llama-sft@step6/dla.csv",
    "results/transcoders/tiny-llama/training.csv",
)
RESULT_SUFFIXES = (".csv", ".json", ".jsonl", ".npy", ".safetensors")


def result_bytes(folder: Path) -> dict[str, bytes]:
    """Every result table and array under ``folder``/results (not sidecars, figures,
    notebooks or memos, which record when and where they were made)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in (folder / "results").rglob("*")
        if path.is_file()
        and path.suffix in RESULT_SUFFIXES
        and not path.name.endswith(".provenance.json")
        and path.name != "provenance.json"
        and ".memo" not in path.parts
    }


def test_rerunning_the_same_config_gives_byte_identical_results(quick_run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(quick_run, again, symlinks=True)
    first = result_bytes(quick_run)
    for result in RERUN_RESULTS:
        (again / result).unlink()
    shutil.rmtree(again / "results/reuse/tiny-llama/.memo")  # recompute, do not look up
    run = run_snakemake(
        "--configfile", "config/presets/quick.yaml", "--", *RERUN_RESULTS, cwd=again
    )
    assert run.returncode == 0, run.stderr[-3000:]
    second = result_bytes(again)
    assert set(second) == set(first)
    for result in RERUN_RESULTS:
        assert (again / result).stat().st_mtime > (quick_run / result).stat().st_mtime
    changed = [name for name in first if first[name] != second[name]]
    assert changed == []


def test_a_checkpoint_series_runs_through_an_analysis_rule_per_checkpoint(tmp_path):
    """A series of tiny random checkpoints standing in for hub revisions: listing it
    under models runs the recall paper's analysis once per checkpoint."""
    from circuit_repro.models.registry import load_registry, series_members

    workdir = copy_workflow(tmp_path)
    members = series_members(load_registry(), "tiny-llama-series")
    targets = [f"results/recall/{m}/contrasts.csv" for m in members]
    (workdir / "series.yaml").write_text("models: [tiny-llama-series]\n")
    run = run_snakemake("--configfile", "config/presets/quick.yaml", "series.yaml", "--",
                        *targets, cwd=workdir)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert all(len(pd.read_csv(workdir / target)) for target in targets)
    # Different checkpoints, different numbers (each head's attribution score).
    heads = [pd.read_csv(workdir / f"results/recall/{m}/heads.csv")["score"] for m in members]
    assert not heads[0].equals(heads[1])
    for member in members:
        assert (workdir / f"benchmarks/recall/{member}/analysis.tsv").exists()


def test_a_hub_model_runs_the_mcqa_rules_as_it_is(tmp_path, hub_client):
    """The larger-model path: a registry entry fetched from the hub (here a local hub
    serving a tiny random Qwen2 under ``qwen2.5-1.5b-instruct``'s repo) runs the MCQA
    rules on the MCQA task's own questions, without a post-training series; only the
    config changes."""
    from hub_server import LocalHub

    from circuit_repro.models.registry import load_registry
    from circuit_repro.models.tiny import (
        RandomModelSpec,
        build_offline_tokenizer,
        build_random_model,
        save_random_model,
    )

    model_id = "qwen2.5-1.5b-instruct"
    registry = load_registry()
    tokenizer = build_offline_tokenizer()
    spec = RandomModelSpec(architecture="qwen2", seed=3, **registry["tiny-qwen2"]["architecture"])
    stand_in = save_random_model(build_random_model(spec, tokenizer), tokenizer, tmp_path / "m")
    workdir = copy_workflow(tmp_path / "workflow")
    (workdir / "hub.yaml").write_text(
        yaml.safe_dump({"models": [model_id], "mcqa": {"task": "mcqa", "post_trained": {}}})
    )
    targets = [f"results/mcqa/{model_id}/claims.csv", f"results/figures/mcqa/{model_id}/dla.png"]
    with LocalHub() as hub:
        commit = hub.publish(registry[model_id]["repo"], stand_in)
        hub_client(hub.endpoint)
        run = run_snakemake("--configfile", "config/presets/quick.yaml", "hub.yaml", "--",
                            *targets, cwd=workdir)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        assert any(request.path.endswith("config.json") for request in hub.requests)
    provenance = json.loads((workdir / f"resources/models/{model_id}/provenance.json").read_text())
    assert provenance["registry_entry"]["repo"] == registry[model_id]["repo"]
    fetched = (workdir / f"resources/downloads/{model_id}/fetched.json").read_text()
    assert commit in fetched
    summary = json.loads((workdir / f"results/mcqa/{model_id}/summary.json").read_text())
    assert summary["n_prompts"] == 8  # the quick preset's prompts, of the mcqa task
    claims = pd.read_csv(workdir / targets[0])
    assert len(claims) == 4 and set(claims["baseline_task"]) == {"mcqa"}
    # Not a series: no checkpoint rows, no base-checkpoint accuracy in the notes.
    assert pd.read_csv(workdir / f"results/mcqa/{model_id}/checkpoints.csv").empty


def test_a_truncated_prepared_model_is_prepared_again(tmp_path):
    """A prepared model whose weights were cut short is not taken as up to date: the
    workflow says so in one line and plans prepare_model again."""
    from circuit_repro.models.prepare import ensure_prepared

    workdir = copy_workflow(tmp_path)
    model_dir = ensure_prepared("tiny-llama", resources=workdir / "resources")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    run = run_snakemake("-n", "--configfile", "config/presets/quick.yaml", "--",
                        "results/tasks/tiny-llama/ioi.jsonl", cwd=workdir)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "prepared model 'tiny-llama' is corrupted (model.safetensors has 100 bytes" in (
        run.stderr
    )
    assert "prepare_model" in run.stdout


def test_a_malformed_config_yaml_is_one_line_with_file_and_line(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "config/config.yaml").write_text("models:\n  - tiny-llama\n seed: [\n")
    run = run_snakemake("-n", cwd=workdir)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "check the indentation (spaces, no tabs) and the brackets and colons there"
    )
    assert "config/config.yaml:3:2: not valid YAML" in last
