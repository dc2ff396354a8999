"""``make reproduce``'s way of starting Snakemake: one run per checkout, and an
interrupted run cleaned up before the next one starts.

``python -m circuit_repro.pipeline.run [snakemake arguments]``, run in the workflow's
folder, does four things before it starts ``snakemake --rerun-incomplete ...``:

1. It takes an exclusive lock (:func:`fcntl.flock`) on ``.snakemake/circuit-repro.run``.
   The kernel drops it when the holder dies, however it dies, so a lock that cannot be
   taken always means a live run: the second run stops with one line naming its pid.
2. It looks for processes working in this folder (by their working directory): a
   Snakemake started by hand is "another run" too; jobs whose Snakemake is gone (it was
   killed with SIGKILL, or the terminal closed) are stopped, since they would otherwise
   race the new run's jobs for the same files.
3. Snakemake's own locks (``.snakemake/locks``) left without a live Snakemake are
   removed, saying so: Snakemake would otherwise refuse to start and ask for
   ``--unlock``.
4. Temporaries of killed jobs (``.<name>.partial<ext>``, see
   :func:`circuit_repro.pipeline.rule_context.temporary_path`) are removed. They are
   never taken as results (outputs appear under their final names only by an atomic
   rename), this only frees their space. So are the provenance sidecars of results
   that Snakemake removed because their job was killed before it was recorded done.

Finished results are untouched: Snakemake keeps every output whose job completed and,
with ``--rerun-incomplete``, reruns the jobs that were cut off. The run's Snakemake
gets its own session; SIGINT, SIGTERM and SIGHUP sent to this process are passed on
to it, and if it dies from a signal its remaining jobs are stopped too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from circuit_repro.pipeline.rule_context import PARTIAL
from circuit_repro.provenance import SIDECAR_SUFFIX

RUN_LOCK = Path(".snakemake/circuit-repro.run")
SNAKEMAKE_LOCKS = Path(".snakemake/locks")
#: Folders searched for the temporaries of killed jobs.
OUTPUT_FOLDERS = ("results", "resources", "logs")
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class AnotherRunError(RuntimeError):
    """A Snakemake run is already going on in this folder."""


@dataclass(frozen=True)
class WorkflowProcess:
    """A process whose working directory is the workflow folder."""

    pid: int
    cmdline: tuple[str, ...]

    @property
    def is_job(self) -> bool:
        """A job Snakemake started: a script from ``.snakemake/scripts``, or a rule
        re-entering Snakemake with ``--target-jobs``."""
        return any(".snakemake/scripts" in word or word == "--target-jobs" for word in self.cmdline)

    @property
    def is_snakemake_main(self) -> bool:
        """A Snakemake scheduler (``snakemake ...`` or ``python -m snakemake ...``)."""
        words = self.cmdline[:3]
        launches = any(Path(word).name == "snakemake" for word in words)
        return launches and not self.is_job


def _lineage(pid: int) -> set[int]:
    """``pid`` and its ancestors (the make or shell that started this run)."""
    found = {pid}
    with contextlib.suppress(psutil.Error):
        found.update(parent.pid for parent in psutil.Process(pid).parents())
    return found


def workflow_processes(folder: Path, exclude: set[int]) -> list[WorkflowProcess]:
    """Processes (other than ``exclude``) working in ``folder`` that belong to a
    Snakemake run: schedulers, jobs, and what those started (a notebook's kernel). A
    shell or an editor open in the folder is not one of them."""
    folder = folder.resolve()
    entries: dict[int, tuple[WorkflowProcess, list[int]]] = {}
    for process in psutil.process_iter(["pid", "cwd"]):
        cwd = process.info.get("cwd")
        if process.pid in exclude or cwd is None:
            continue
        try:
            if Path(cwd).resolve() != folder:
                continue
            entry = WorkflowProcess(process.pid, tuple(process.cmdline()))
            ancestors = [parent.pid for parent in process.parents()]
        except (psutil.Error, OSError):
            continue  # exited meanwhile, or not ours to inspect
        entries[process.pid] = (entry, ancestors)
    runs = {pid for pid, (entry, _) in entries.items() if entry.is_snakemake_main or entry.is_job}
    return [
        entry
        for pid, (entry, ancestors) in entries.items()
        if pid in runs or any(a in runs for a in ancestors)
    ]


def _stop(processes: Sequence[WorkflowProcess], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds for those still alive."""
    handles = []
    for entry in processes:
        with contextlib.suppress(psutil.Error):
            handle = psutil.Process(entry.pid)
            handle.terminate()
            handles.append(handle)
    _, alive = psutil.wait_procs(handles, timeout=grace)
    for handle in alive:
        with contextlib.suppress(psutil.Error):
            handle.kill()
    psutil.wait_procs(alive, timeout=grace)


@contextlib.contextmanager
def run_lock(path: Path = RUN_LOCK) -> Iterator[None]:
    """Hold the exclusive run lock of this folder; :class:`AnotherRunError` if taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held for the whole run)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown pid"
            raise AnotherRunError(
                f"another run is in progress in this checkout ({holder}); wait for it to "
                "finish, or stop it with Ctrl-C (or kill its pid), then rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()}, started {started}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def clean_up_interrupted_run(folder: Path = Path(".")) -> list[str]:
    """Prepare ``folder`` for a new run after an interrupted one (steps 2-4 of the
    module docstring, called with the run lock held); returns what was done, one line
    each. Raises :class:`AnotherRunError` when a Snakemake not started through this
    module is running here."""
    notes = []
    others = workflow_processes(folder, exclude=_lineage(os.getpid()))
    mains = [p for p in others if p.is_snakemake_main]
    if mains:
        pids = ", ".join(str(p.pid) for p in mains)
        raise AnotherRunError(
            f"another run is in progress in this checkout (snakemake pid {pids}); wait for "
            f"it to finish, or stop it (kill {pids}), then rerun"
        )
    if others:
        _stop(others)
        pids = ", ".join(str(p.pid) for p in others)
        notes.append(
            f"stopped {len(others)} job(s) left running by an interrupted run (pid {pids})"
        )
    locks = folder / SNAKEMAKE_LOCKS
    if locks.is_dir() and any(locks.iterdir()):
        shutil.rmtree(locks)
        notes.append(
            f"removed a stale Snakemake lock ({SNAKEMAKE_LOCKS}) left by an interrupted run; "
            "no other run is going on here"
        )
    partials = [
        path
        for name in OUTPUT_FOLDERS
        if (folder / name).is_dir()
        for path in (folder / name).rglob(f".*{PARTIAL}*")
    ]
    for path in partials:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if partials:
        notes.append(f"removed {len(partials)} unfinished temporary file(s) of interrupted jobs")
    # A job killed after writing its sidecars but before Snakemake recorded it finished:
    # Snakemake removed its outputs, the sidecars (which it does not know of) remain.
    sidecars = [
        path
        for name in OUTPUT_FOLDERS
        if (folder / name).is_dir()
        for path in (folder / name).rglob(f"?*{SIDECAR_SUFFIX}")
        if not path.with_name(path.name.removesuffix(SIDECAR_SUFFIX)).exists()
    ]
    for path in sidecars:
        path.unlink(missing_ok=True)
    if sidecars:
        notes.append(f"removed {len(sidecars)} provenance sidecar(s) of results that are gone")
    return notes


def snakemake_executable() -> str:
    """The ``snakemake`` beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("snakemake")
    return str(beside) if beside.exists() else shutil.which("snakemake") or "snakemake"


def run_snakemake(arguments: Sequence[str]) -> int:
    """Start Snakemake with ``--rerun-incomplete`` in its own session and wait for it;
    pass on the signals of :data:`_FORWARDED_SIGNALS`; returns its exit status (128 +
    the signal when it was killed by one, as a shell reports it)."""
    # First, so that it cannot land among the targets that follow a "--".
    rerun = [] if {"--rerun-incomplete", "--ri"} & set(arguments) else ["--rerun-incomplete"]
    command = [snakemake_executable(), *rerun, *arguments]
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in _FORWARDED_SIGNALS}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if status < 0:
        # Killed by a signal: its jobs would keep running without it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGTERM)
        return 128 - status
    return status


def main(arguments: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if arguments is None else arguments)
    try:
        with run_lock():
            for note in clean_up_interrupted_run():
                print(note, file=sys.stderr)
            return run_snakemake(arguments)
    except AnotherRunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
