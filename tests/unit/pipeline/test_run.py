"""Starting a run: one per checkout, and what an interrupted run left is cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import circuit_repro.pipeline.run as run_module
from circuit_repro.pipeline.run import (
    AnotherRunError,
    WorkflowProcess,
    clean_up_interrupted_run,
    run_lock,
    run_snakemake,
)

SLEEPER = "import time; time.sleep(120)"


@pytest.fixture
def started(tmp_path):
    """``started(argv, cwd)``: a process left running during the test, stopped after."""
    processes = []

    def start(argv, cwd=tmp_path):
        process = subprocess.Popen(argv, cwd=cwd)
        processes.append(process)
        time.sleep(0.5)  # its command line and working directory are set by now
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def script(folder: Path, relative: str) -> str:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SLEEPER)
    return str(path)


@pytest.mark.parametrize(
    ("cmdline", "main", "job"),
    [
        (("/v/bin/python", "/v/bin/snakemake", "--cores", "2"), True, False),
        (("python", "-m", "snakemake", "--cores", "2"), True, False),
        (("/v/bin/python", "/w/.snakemake/scripts/tmpab12.baseline.py"), False, True),
        (
            ("python", "-m", "snakemake", "--target-jobs", "x:model=a", "--mode", "subprocess"),
            False,
            True,
        ),
        (("bash",), False, False),
        (("vim", "snakemake.log"), False, False),
    ],
)
def test_schedulers_and_jobs_are_told_apart(cmdline, main, job):
    process = WorkflowProcess(1, cmdline)
    assert (process.is_snakemake_main, process.is_job) == (main, job)


def test_a_second_run_in_the_same_checkout_is_refused_naming_the_first(tmp_path):
    lock = tmp_path / ".snakemake" / "circuit-repro.run"
    with run_lock(lock), pytest.raises(AnotherRunError) as raised, run_lock(lock):
        pass
    message = str(raised.value)
    assert message.startswith(f"another run is in progress in this checkout (pid {os.getpid()}, ")
    assert "\n" not in message
    with run_lock(lock):  # released when the first run ended
        pass


def test_the_lock_of_a_killed_run_is_free(tmp_path):
    lock = tmp_path / ".snakemake" / "circuit-repro.run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from circuit_repro.pipeline.run import run_lock\n"
            f"with run_lock(__import__('pathlib').Path({str(lock)!r})):\n"
            f"    print('held', flush=True); __import__('time').sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(AnotherRunError), run_lock(lock):
        pass
    holder.kill()
    holder.wait()
    with run_lock(lock):  # the kernel released it with the killed process
        pass


def test_what_an_interrupted_run_left_is_cleaned_and_results_are_kept(tmp_path, started):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/a/x.csv\n")
    finished = tmp_path / "results" / "a" / "x.csv"
    finished.parent.mkdir(parents=True)
    finished.write_text("done\n")
    partial = finished.with_name(".y.csv.partial.csv")
    partial.write_text("half")
    partial_folder = tmp_path / "results" / "a" / ".figures.partial"
    partial_folder.mkdir()
    (tmp_path / "results" / "a" / "x.csv.provenance.json").write_text("{}")  # of x.csv: kept
    orphaned_sidecar = tmp_path / "results" / "a" / "z.csv.provenance.json"
    orphaned_sidecar.write_text("{}")
    (tmp_path / "results" / "a" / "folder").mkdir()
    folder_provenance = tmp_path / "results" / "a" / "folder" / "provenance.json"
    folder_provenance.write_text("{}")  # a folder output's own record: kept
    job = started([sys.executable, script(tmp_path, ".snakemake/scripts/tmpab12.baseline.py")])
    shell = started([sys.executable, "-c", SLEEPER])  # e.g. the user's shell: not ours

    notes = clean_up_interrupted_run(tmp_path)

    assert notes == [
        f"stopped 1 job(s) left running by an interrupted run (pid {job.pid})",
        "removed a stale Snakemake lock (.snakemake/locks) left by an interrupted run; "
        "no other run is going on here",
        "removed 2 unfinished temporary file(s) of interrupted jobs",
        "removed 1 provenance sidecar(s) of results that are gone",
    ]
    assert job.wait(timeout=10) is not None
    assert shell.poll() is None
    assert not locks.exists() and not partial.exists() and not partial_folder.exists()
    assert finished.read_text() == "done\n"
    assert not orphaned_sidecar.exists() and folder_provenance.exists()
    assert (tmp_path / "results" / "a" / "x.csv.provenance.json").exists()
    assert clean_up_interrupted_run(tmp_path) == []  # nothing left to do


def test_a_snakemake_started_by_hand_counts_as_another_run(tmp_path, started):
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text("results/a/x.csv\n")
    other = started([sys.executable, script(tmp_path, "bin/snakemake"), "--cores", "1"])
    with pytest.raises(AnotherRunError, match=rf"\(snakemake pid {other.pid}\); wait for it"):
        clean_up_interrupted_run(tmp_path)
    assert other.poll() is None and any(locks.iterdir())  # its lock is not touched


def fake_snakemake(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bin" / "snakemake"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport os, signal, subprocess, sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_snakemake_reruns_incomplete_jobs_and_its_status_is_returned(tmp_path, monkeypatch):
    arguments = tmp_path / "arguments"
    executable = fake_snakemake(
        tmp_path, f"open({str(arguments)!r}, 'w').write(' '.join(sys.argv[1:])); sys.exit(3)"
    )
    monkeypatch.setattr(run_module, "snakemake_executable", lambda: executable)
    assert run_snakemake(["--cores", "2", "--", "all"]) == 3
    assert arguments.read_text() == "--rerun-incomplete --cores 2 -- all"


def test_jobs_of_a_snakemake_killed_by_a_signal_are_stopped(tmp_path, monkeypatch):
    job_pid = tmp_path / "job.pid"
    executable = fake_snakemake(
        tmp_path,
        f"job = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
        f"open({str(job_pid)!r}, 'w').write(str(job.pid))\n"
        "os.kill(os.getpid(), signal.SIGKILL)",
    )
    monkeypatch.setattr(run_module, "snakemake_executable", lambda: executable)
    assert run_snakemake([]) == 128 + 9
    pid = int(job_pid.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the orphaned job is still running"
        time.sleep(0.1)
