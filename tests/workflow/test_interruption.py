"""Interrupted runs, started the way ``make reproduce`` starts them
(:mod:`circuit_repro.pipeline.run`), on the quick preset in a copy of the workflow.

One sequence of runs in one folder: a second run started beside a running one is
refused; a job killed with SIGKILL fails its run without leaving a result; a run whose
Snakemake and runner are both killed with SIGKILL (its job left running) is followed by
one that stops the orphaned job, removes the stale lock itself and completes. Every
result finished before a kill is kept, byte for byte and with its modification time
(never recomputed), and no temporary is left or taken for a result.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_workflow import copy_workflow

from circuit_repro.pipeline.run import workflow_processes

pytestmark = pytest.mark.workflow

TARGETS = ("results/reuse/tiny-llama/claims.csv",)
RUN = [
    sys.executable,
    "-m",
    "circuit_repro.pipeline.run",
    "--cores",
    "2",
    "--configfile",
    "config/presets/quick.yaml",
    "--",
    *TARGETS,
]


def start_run(workdir: Path, log: Path) -> subprocess.Popen:
    """A run in the background, its output into ``log`` (a file, not a pipe: jobs that
    outlive a killed run keep their copy of it open)."""
    with open(log, "w") as handle:
        return subprocess.Popen(RUN, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT)


def wait_for(condition, run: subprocess.Popen, timeout: float = 300.0, what: str = "condition"):
    """``condition()``'s first true value, checked while ``run`` goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.poll() is not None:
            raise AssertionError(f"the run ended before {what} (status {run.returncode})")
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def snakemake_of(runner: subprocess.Popen) -> psutil.Process | None:
    children = psutil.Process(runner.pid).children()
    return children[0] if children else None


def running_job(runner: subprocess.Popen) -> psutil.Process | None:
    """A job (a script Snakemake started) of the run, once one runs."""
    main = snakemake_of(runner)
    if main is None:
        return None
    for child in main.children():
        try:
            if any(".snakemake/scripts" in word for word in child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def finished_results(workdir: Path) -> dict[str, tuple[int, bytes, bytes]]:
    """Every finished result under results/: its modification time, bytes, and the
    bytes of its provenance sidecar (if any)."""
    found = {}
    for path in (workdir / "results").rglob("*"):
        if not path.is_file() or ".partial" in path.name or path.name.endswith(".provenance.json"):
            continue
        sidecar = path.with_name(path.name + ".provenance.json")
        found[str(path.relative_to(workdir))] = (
            path.stat().st_mtime_ns,
            path.read_bytes(),
            sidecar.read_bytes() if sidecar.exists() else b"",
        )
    return found


def reported_finished(log: str) -> set[str]:
    """Outputs of the jobs Snakemake reported finished in its ``log`` (its stderr): a
    job's block lists ``output: a, b`` then ``jobid: N``; ``Finished jobid: N`` ends it."""
    outputs: dict[str, list[str]] = {}
    pending: list[str] = []
    finished: set[str] = set()
    for line in log.splitlines():
        line = line.strip()
        if line.startswith("output: "):
            pending = [path.strip() for path in line.removeprefix("output: ").split(",")]
        elif line.startswith("jobid: "):
            outputs[line.removeprefix("jobid: ")] = pending
        elif line.startswith("Finished jobid: "):
            finished.update(outputs.get(line.removeprefix("Finished jobid: ").split()[0], []))
    return finished


def partials(workdir: Path) -> list[str]:
    return [str(p) for p in (workdir / "results").rglob("*") if ".partial" in p.name]


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow; whatever a failed test left running in it is killed."""
    folder = copy_workflow(tmp_path / "wf")
    yield folder
    for process in workflow_processes(folder, exclude={os.getpid()}):
        with contextlib.suppress(psutil.Error):
            psutil.Process(process.pid).kill()  # SIGKILL also ends a suspended job


def test_interrupted_runs_resume_without_losing_a_finished_result(workdir, tmp_path):

    # 1. A run, and a second one started beside it.
    first = start_run(workdir, tmp_path / "first.log")
    wait_for(lambda: running_job(first), first, what="a job of the first run")
    second = subprocess.run(RUN, cwd=workdir, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert second.stdout == ""
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(
        f"error: another run is in progress in this checkout (pid {first.pid}, started "
    )
    assert line.endswith(
        "wait for it to finish, or stop it with Ctrl-C (or kill its pid), then rerun"
    )

    # 2. SIGKILL on a running job, once some results are finished.
    wait_for(lambda: finished_results(workdir), first, what="a finished result")
    job = wait_for(lambda: running_job(first), first, what="a running job")
    job.send_signal(signal.SIGKILL)
    first.wait(timeout=300)
    stderr = (tmp_path / "first.log").read_text()
    assert first.returncode != 0, stderr[-2000:]
    assert "Error in rule" in stderr, stderr[-2000:]
    # The killed job's outputs are gone (it may have renamed one into place just before
    # the kill: Snakemake removes the outputs of a job that did not finish).
    kept = {path: found for path, found in finished_results(workdir).items()}
    assert set(kept) >= {p for p in reported_finished(stderr) if p.startswith("results/")}

    # 3. The next run, killed with SIGKILL (runner and Snakemake; its job keeps running).
    third = start_run(workdir, tmp_path / "third.log")
    orphan = wait_for(
        lambda: "Finished jobid" in (tmp_path / "third.log").read_text() and running_job(third),
        third,
        what="a finished job of the third run and a running one",
    )
    # Held still, as a hung job would be, so it is certainly running when the next run
    # starts (a tiny job could otherwise finish in the second between).
    orphan.suspend()
    main = snakemake_of(third)
    os.kill(third.pid, signal.SIGKILL)
    main.send_signal(signal.SIGKILL)
    third.wait(timeout=30)
    main.wait(timeout=30)
    # Results of jobs Snakemake finished, by either run: never to be computed again.
    finished = reported_finished((tmp_path / "third.log").read_text()) | set(kept)
    before = {p: found for p, found in finished_results(workdir).items() if p in finished}
    assert len(before) > len(kept)  # the third run finished results of its own
    assert orphan.is_running()
    assert any((workdir / ".snakemake" / "locks").iterdir())  # Snakemake's lock is stale

    # 4. The run after that completes, cleaning up first and saying so.
    last = subprocess.run(RUN, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-3000:]
    notes = last.stderr.splitlines()
    assert (
        "removed a stale Snakemake lock (.snakemake/locks) left by an interrupted run; "
        "no other run is going on here"
    ) in notes
    (stopped,) = [n for n in notes if n.startswith("stopped ")]
    assert " job(s) left running by an interrupted run (pid " in stopped
    assert str(orphan.pid) in stopped
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    for target in TARGETS:
        assert (workdir / target).stat().st_size > 0
    after = finished_results(workdir)
    for path, found in before.items():
        assert after[path] == found, f"{path} was recomputed or changed"
    assert partials(workdir) == []
    orphaned_sidecars = [
        p
        for p in (workdir / "results").rglob("*.provenance.json")
        if not p.with_name(p.name.removesuffix(".provenance.json")).exists()
    ]
    assert orphaned_sidecars == []
    # Nothing left to do.
    dry = subprocess.run(
        [*RUN[:3], "-n", *RUN[3:]], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr
