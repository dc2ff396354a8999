"""The quick preset on a real single-node SLURM cluster, through the slurm profile.

The module fixture brings SLURM up with ``.ci/slurm-up.sh`` (apt packages, munge,
mariadb, slurmdbd, slurmctld, slurmd) unless it is already up, and stops what it
started afterwards. Without root or apt-get the tests are skipped, except under
``CI=true``, where that is a failure.

One SLURM run covers everything: ``CIRCUIT_REPRO_FAIL_ONCE=ioi_baseline_notebook``
makes the first attempt of that job fail, so the run also shows the retry with more
memory.
A local run of the same preset, started first and running alongside, gives the
numbers the SLURM run must reproduce.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import SNAKEMAKE, copy_workflow

from circuit_repro.pipeline.config import REPO_ROOT
from circuit_repro.pipeline.resources import rule_resources

pytestmark = pytest.mark.workflow

IN_CI = os.environ.get("CI", "").lower() == "true"
PARTITION = "main"  # .ci/slurm-up.sh's defaults
ACCOUNT = "circuit-repro"
QUICK = "config/presets/quick.yaml"
# Rules that run on the submitting host (localrules, and the target rule).
LOCAL_RULES = {"fetch_model", "all"}
GROUPED_RULES = {"build_task", "baseline", "baseline_table"}  # group "model_{model}"
# The rule whose first attempt fails, and the kind it passes to rule_resources. A last,
# short, ungrouped job: its retry overlaps the other notebooks and costs little time.
FAIL_ONCE = "ioi_baseline_notebook"
FAIL_ONCE_KIND = "notebook"
FAIL_ONCE_LOG = "logs/notebooks/ioi_baseline.log"
RUN_TIMEOUT_S = 720  # the quick preset through SLURM beside a local run; a hang guard
# The CI node's size (2 CPUs): pack group jobs to fit it.
NODE_LIMITS = ["--resources", "cpus_per_task=2", "gpu=1", "mem_mb=16000"]


def _unavailable(reason: str):
    """Skip, or under CI=true fail: CI must run this test."""
    if IN_CI:
        pytest.fail(f"CI=true, but SLURM cannot be set up: {reason}")
    pytest.skip(reason)


def _quiet(*command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _slurm_is_up() -> bool:
    """Partition up, node usable, and the account known to accounting."""
    if not (shutil.which("sinfo") and shutil.which("sacctmgr")):
        return False
    try:  # a controller that is not running makes these wait for their timeouts
        states = _quiet("sinfo", "-h", "-p", PARTITION, "-o", "%a %t", timeout=5)
        if not re.search(r"^up (idle|mix|alloc)", states.stdout, re.MULTILINE):
            return False
        accounts = _quiet("sacctmgr", "-n", "-P", "list", "account", "format=account", timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return ACCOUNT in accounts.stdout.split()


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running SLURM cluster; started (and stopped afterwards) here if needed."""
    if _slurm_is_up():
        yield "already up"
        return
    if os.geteuid() != 0:
        _unavailable("setting up SLURM needs root (apt-get install, daemons)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        _unavailable("no apt-get to install SLURM with, and no SLURM installed")
    up = subprocess.run(
        ["bash", str(REPO_ROOT / ".ci/slurm-up.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SLURM_PARTITION": PARTITION, "SLURM_ACCOUNT": ACCOUNT},
    )
    try:
        if up.returncode != 0:
            _unavailable(f".ci/slurm-up.sh failed:\n{up.stdout[-2000:]}\n{up.stderr[-3000:]}")
        yield "started"
    finally:
        subprocess.run(["bash", str(REPO_ROOT / ".ci/slurm-down.sh")], timeout=180)


def _start_local_run(workdir: Path) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "CIRCUIT_REPRO_FAIL_ONCE"}
    return subprocess.Popen(
        [SNAKEMAKE, "--cores", "2", "--configfile", QUICK],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: killed with its jobs below
    )


def _run_until(process: subprocess.Popen, timeout: float) -> str:
    """Output of a finished process; on timeout interrupt it (snakemake cancels its
    SLURM jobs on SIGINT; it may ignore SIGTERM), then kill it, and fail."""
    try:
        output, _ = process.communicate(timeout=timeout)
        return output
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        run_id = re.search(r"SLURM run ID: (\S+)", output)
        if run_id:  # jobs of this run still queued: cancel them, by the run's job name
            subprocess.run(["scancel", "--name", run_id.group(1)], timeout=30)
        pytest.fail(f"snakemake ran past {timeout} s:\n{output[-5000:]}")


@dataclass
class Runs:
    local_dir: Path
    slurm_dir: Path
    local_output: str
    slurm_output: str
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Runs:
    """The quick preset run locally and, at the same time, through the slurm profile."""
    local_dir = copy_workflow(tmp_path_factory.mktemp("local"))
    local_start = time.monotonic()
    local = _start_local_run(local_dir)
    try:
        request.getfixturevalue("slurm_cluster")
    except BaseException:  # skipped, or SLURM failed to start: stop the local run
        os.killpg(local.pid, signal.SIGKILL)
        local.communicate()
        raise
    slurm_dir = copy_workflow(tmp_path_factory.mktemp("slurm"))
    slurm_start = time.monotonic()
    slurm = subprocess.Popen(
        [
            SNAKEMAKE,
            "--workflow-profile",
            "workflow/profiles/slurm",
            "--configfile",
            QUICK,
            *NODE_LIMITS,
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--slurm-keep-successful-logs",
        ],
        cwd=slurm_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            # The profile reads the account and partition from sbatch's own variables.
            "SBATCH_ACCOUNT": ACCOUNT,
            "SBATCH_PARTITION": PARTITION,
            "CIRCUIT_REPRO_FAIL_ONCE": FAIL_ONCE,
        },
    )
    slurm_output = _run_until(slurm, RUN_TIMEOUT_S)
    slurm_seconds = time.monotonic() - slurm_start
    assert slurm.returncode == 0, slurm_output[-6000:]
    local_output = _run_until(local, RUN_TIMEOUT_S)
    local_seconds = time.monotonic() - local_start
    assert local.returncode == 0, local_output[-4000:]
    print(f"quick preset: SLURM {slurm_seconds:.0f} s, local {local_seconds:.0f} s (side by side)")
    return Runs(
        local_dir,
        slurm_dir,
        local_output,
        slurm_output,
        {"slurm": slurm_seconds, "local": local_seconds},
    )


def _submissions(output: str) -> list[tuple[str, Path]]:
    """(SLURM job id, its log file) for every job the run submitted."""
    pattern = r"has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.$"
    return [(job, Path(log)) for job, log in re.findall(pattern, output, re.MULTILINE)]


def _rules_in(text: str) -> set[str]:
    """Rules a snakemake log says it ran (``rule x:``; local rules say ``localrule x:``)."""
    return set(re.findall(r"^\s*rule (\w+):$", text, re.MULTILINE))


def _sacct(job_ids) -> dict[str, dict[str, str]]:
    """sacct's view of jobs: state, requested memory (MB) and comment, by job id."""
    fields = ["JobID", "State", "ReqMem", "Comment"]
    run = _quiet(
        "sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields), timeout=60
    )
    assert run.returncode == 0, run.stderr
    rows = {}
    for line in run.stdout.splitlines():
        row = dict(zip(fields, line.split("|"), strict=True))
        rows[row["JobID"]] = row
    return rows


def _megabytes(req_mem: str) -> float:
    """sacct's ReqMem (e.g. 2304M, 4G, 1.50G, with an n/c suffix on older SLURM)."""
    match = re.fullmatch(r"([\d.]+)([KMGT])[nc]?", req_mem)
    assert match, req_mem
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]
    return float(match.group(1)) * scale


def _model(slurm_dir: Path) -> str:
    (model,) = yaml.safe_load((slurm_dir / QUICK).read_text())["models"]
    return model


def test_every_non_local_job_ran_as_a_slurm_job(runs):
    submissions = _submissions(runs.slurm_output)
    assert submissions, runs.slurm_output[-3000:]
    ran_in_slurm = set()
    for _, log in submissions:
        assert log.is_file(), f"no SLURM log {log}"
        assert log.is_relative_to(runs.slurm_dir / ".snakemake/slurm_logs")
        ran_in_slurm |= _rules_in(log.read_text())
    # The local run names every rule of the DAG (all of them local there).
    every_rule = set(re.findall(r"^localrule (\w+):$", runs.local_output, re.MULTILINE))
    assert every_rule > LOCAL_RULES, every_rule
    assert ran_in_slurm == every_rule - LOCAL_RULES
    # The local rules ran in the submitting process, before anything was submitted.
    head = runs.slurm_output[: runs.slurm_output.index("has been submitted with SLURM jobid")]
    assert re.search(r"^localrule fetch_model:$", head, re.MULTILINE), head[-3000:]
    # sacct knows every job; all completed but the injected failure.
    accounting = _sacct([job for job, _ in submissions])
    assert set(accounting) == {job for job, _ in submissions}, accounting
    states = sorted(row["State"] for row in accounting.values())
    assert states == ["COMPLETED"] * (len(submissions) - 1) + ["FAILED"], accounting


def test_a_model_s_jobs_ran_as_one_group_job(runs):
    model = _model(runs.slurm_dir)
    group_logs = [
        log
        for _, log in _submissions(runs.slurm_output)
        if log.parent.name.startswith(f"group_model_{model}_")
    ]
    assert len(group_logs) == 1, group_logs
    assert _rules_in(group_logs[0].read_text()) >= GROUPED_RULES


def test_failed_job_was_retried_with_more_memory(runs):
    attempts = [
        (job, log)
        for job, log in _submissions(runs.slurm_output)
        if log.parent.name == f"rule_{FAIL_ONCE}"
    ]
    assert len(attempts) == 2, attempts
    (first, first_log), (second, second_log) = sorted(attempts, key=lambda pair: int(pair[0]))
    assert f"injected failure of rule '{FAIL_ONCE}' on attempt 1" in first_log.read_text()
    assert "Trying to restart job" in runs.slurm_output
    accounting = _sacct([first, second])
    assert accounting[first]["State"] == "FAILED", accounting
    assert accounting[second]["State"] == "COMPLETED", accounting
    # SLURM was asked for the memory circuit_repro.pipeline.resources gives each attempt.
    requested = [_megabytes(accounting[job]["ReqMem"]) for job in (first, second)]
    expected = [rule_resources(FAIL_ONCE_KIND, None, attempt)["mem_mb"] for attempt in (1, 2)]
    assert requested == expected, accounting
    assert requested[1] > requested[0]
    # The rule's own log is the successful second attempt's.
    log = (runs.slurm_dir / FAIL_ONCE_LOG).read_text()
    assert f"rule {FAIL_ONCE}, attempt 2" in log


def test_outputs_equal_a_local_run(runs):
    model = _model(runs.slurm_dir)
    tasks = Path("results/tasks") / model
    local, slurm = runs.local_dir / tasks, runs.slurm_dir / tasks
    prompts = sorted(local.glob("*.jsonl"))
    assert prompts
    for path in prompts:
        assert (slurm / path.name).read_bytes() == path.read_bytes(), path.name
    tables = ["baseline.csv", *(f"baseline/{path.name}" for path in local.glob("baseline/*.csv"))]
    for table in tables:
        pd.testing.assert_frame_equal(pd.read_csv(slurm / table), pd.read_csv(local / table))
    summaries = [p for p in local.glob("baseline/*.json") if ".provenance." not in p.name]
    assert summaries
    for path in summaries:
        summary = json.loads((slurm / "baseline" / path.name).read_text())
        assert summary == json.loads(path.read_text()), path.name
    for figure in sorted((runs.local_dir / "results/figures").rglob("*.png")):
        twin = runs.slurm_dir / figure.relative_to(runs.local_dir)
        assert twin.stat().st_size > 1000, twin


def _gpus_by_rule(output: str) -> dict[str, set[int]]:
    """The gpu resource of every job in a dry run, by rule."""
    gpus: dict[str, set[int]] = {}
    for block in re.split(r"\n\s*\n", output):
        rule = re.search(r"^\s*(?:local)?rule (\w+):$", block, re.MULTILINE)
        gpu = re.search(r"^\s*resources: .*\bgpu=(\d+)", block, re.MULTILINE)
        if rule and gpu:
            gpus.setdefault(rule.group(1), set()).add(int(gpu.group(1)))
    return gpus


def test_gpu_preset_requests_gpus_for_model_runs_only(tmp_path):
    """No cluster needed: the dry run shows each job's resources."""
    workdir = copy_workflow(tmp_path)
    plans = {}
    for name, presets in {"cpu": [QUICK], "gpu": [QUICK, "config/presets/gpu.yaml"]}.items():
        run = subprocess.run(
            [SNAKEMAKE, "-n", "--cores", "2", "--configfile", *presets],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        plans[name] = _gpus_by_rule(run.stdout)
    assert set().union(*plans["cpu"].values()) == {0}, plans["cpu"]
    gpu_rules = {rule for rule, gpus in plans["gpu"].items() if gpus != {0}}
    assert "baseline" in gpu_rules and plans["gpu"]["baseline"] == {1}, plans["gpu"]
    no_model_runs = {"fetch_model", "prepare_model", "build_task", "baseline_table"}
    assert not gpu_rules & (no_model_runs | {FAIL_ONCE}), gpu_rules
