"""One rule context for every script: its log, atomic outputs, provenance and errors.

Every script under ``workflow/scripts`` is a few lines inside :func:`rule_context`::

    with rule_context(snakemake) as ctx:
        records = read_jsonl(ctx.input.prompts)
        scores = score(records, ctx.params.compute)
        scores.to_csv(ctx.output.scores, index=False)     # a temporary path
        ctx.provenance(n_records=len(records))            # extra sidecar fields

The context

- sends stdout, stderr, ``logging`` and progress bars (tqdm writes to stderr) to the
  rule's log (``snakemake.log[0]``) and starts it with ``rule <name>, attempt <n>``
  (the attempt is ``snakemake.resources.attempt``, which
  :func:`circuit_repro.pipeline.resources.resource_functions` adds to every rule);
- hands out a temporary path for each output (``ctx.output.scores``,
  ``ctx.output("scores")``, ``ctx.output[0]`` for an unnamed one) and, only once the
  body has finished without error, renames each onto its final name with
  :func:`os.replace`. A job that fails, or is killed, never leaves a file under a final
  name that looks finished; after an exception (or SIGTERM) the temporaries are removed.
  The temporary of ``results/x/scores.csv`` is ``results/x/.scores.csv.partial.csv``:
  hidden, beside the final file (same file system, so the rename is atomic), and ending
  in the same extension so libraries that infer the format (matplotlib, papermill)
  still work; see :func:`temporary_path`. A temporary may also be made a folder (an
  output declared with ``directory()``): it is renamed the same way, replacing the old
  folder;
- writes the provenance sidecar ``<output>.provenance.json`` of every file output
  (``provenance.json`` inside a folder output that has none) from what it knows: the
  rule, its wildcards (flat: ``model``, ``task``, ...), the ``seed`` param, the other
  params that are plain JSON data (config slices; callables and objects are left out),
  the input paths (no hashing: inputs may be model weights), the environment of
  :func:`circuit_repro.provenance.provenance_record` (package versions, git commit,
  host, time), and whatever the
  script adds with ``ctx.provenance(**fields)``. A provenance file as output (a
  prepared model's ``provenance.json`` marker) gets no sidecar of its own. The sidecar
  of an output that does not exist when the job starts (Snakemake removed the result
  of an earlier run) is removed first, so a failed job leaves no sidecar behind;
- ends the log of a job that succeeded with its ``timing: {...}`` line (seconds of
  startup, model loading, writing and the rest, the computation; see
  :mod:`circuit_repro.timing`);
- turns a :class:`~circuit_repro.errors.UserFacingError` into one line ``error: ...``
  on the terminal and in the log, a write that failed on a full disk into one line
  naming the file, the space left and the fix (:func:`disk_full_message`), and any
  other exception into its traceback in the log plus one line naming the log; all
  exit with status 1 (the job's temporaries are removed, earlier results stay).

Outputs that a library writes itself under the final name (``fetch_model`` writes its
own manifest, ``prepare_model`` its own folder) are declared with ``ctx.final(name)``,
which returns the final path: the script opts out of the rename for that output, and
Snakemake removes it if the job fails (as it removes every output of a failed job). An
output the script touched through neither method but that exists when the body ends
is accepted the same way, with a warning in the log; one that does not exist is an
error naming it.

Fault injection (for testing retries): with the environment variable
``CIRCUIT_REPRO_FAIL_ONCE`` set to a rule name (or several, comma-separated), the first
attempt of every job of that rule fails with :class:`InjectedFailure`; later attempts
(``snakemake --retries``) run normally.

Tests need no Snakemake: any object with ``log``, ``output``, ``input``, ``params``,
``wildcards``, ``rule`` and ``resources`` works (see tests/unit/pipeline/test_rule_context.py);
each of ``output``, ``input``, ``params``, ``wildcards`` may be a Snakemake named list,
a dict, a ``SimpleNamespace`` or a plain list.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from circuit_repro.errors import UserFacingError
from circuit_repro.provenance import (
    FOLDER_PROVENANCE,
    is_provenance_file,
    plain_data,
    provenance_record,
    sidecar_path,
    write_json,
)
from circuit_repro.timing import process_age, timing_line

FAIL_ONCE_VARIABLE = "CIRCUIT_REPRO_FAIL_ONCE"
PARTIAL = ".partial"
# Suffixes that name a compression of the format before them (kept together, so the
# temporary of x.csv.gz ends in .csv.gz).
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip"}

log = logging.getLogger(__name__)


class InjectedFailure(UserFacingError):
    """The failure requested by ``CIRCUIT_REPRO_FAIL_ONCE`` (testing retries)."""


class MissingOutputError(RuntimeError):
    """A rule body finished without writing one of its outputs (a bug in the script)."""


def check_injected_failure(rule: str | None, attempt: int) -> None:
    """Raise :class:`InjectedFailure` on attempt 1 of a rule named in ``CIRCUIT_REPRO_FAIL_ONCE``."""
    names = {name.strip() for name in os.environ.get(FAIL_ONCE_VARIABLE, "").split(",")}
    if rule is not None and rule in names and attempt == 1:
        raise InjectedFailure(
            f"injected failure of rule {rule!r} on attempt {attempt} "
            f"({FAIL_ONCE_VARIABLE}={os.environ[FAIL_ONCE_VARIABLE]}); a retry will succeed"
        )


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the file system (or the user's quota on it) is full."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"


def disk_full_message(error: OSError, rule: str | None, written: str | None = None) -> str:
    """One line for a write that failed on a full disk: what was being written
    (``written``, else the error's file name), the space left there, and what to do."""
    written = written or error.filename or "an output"
    where = Path(error.filename).parent if error.filename else Path.cwd()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = f"{_human_bytes(shutil.disk_usage(where).free)} free in {where}"
    except OSError:
        free = f"free space in {where} unknown"
    job = f"rule {rule}, " if rule else ""
    return (
        f"disk full while writing {written} ({job}{free}); free some space (make clean "
        "removes results but keeps prepared models) and rerun: finished results are kept "
        "and this job starts again"
    )


def temporary_path(final: str | Path) -> Path:
    """The temporary path of the output ``final``: ``<dir>/.<name>.partial<ext>``.

    ``results/x/scores.csv`` -> ``results/x/.scores.csv.partial.csv``;
    ``t.csv.gz`` -> ``.t.csv.gz.partial.csv.gz``; ``folder`` -> ``.folder.partial``.
    """
    final = Path(final)
    suffixes = final.suffixes[-2:] if final.suffix in _COMPRESSION_SUFFIXES else final.suffixes[-1:]
    return final.with_name(f".{final.name}{PARTIAL}{''.join(suffixes)}")


def _named(container: Any) -> dict[str, Any]:
    """Named entries of a Snakemake named list, a mapping or a namespace."""
    if container is None:
        return {}
    if isinstance(container, Mapping):
        return dict(container)
    items = getattr(container, "items", None)
    if callable(items):  # Snakemake's Namedlist
        return dict(items())
    if isinstance(container, (list, tuple)):
        return {}
    return {name: value for name, value in vars(container).items() if not name.startswith("_")}


def _positional(container: Any) -> list[Any]:
    """Every entry in order (a Snakemake named list is a list; a dict gives its values)."""
    if container is None:
        return []
    if isinstance(container, (list, tuple)):
        return list(container)
    return list(_named(container).values())


def _paths(value: Any) -> str | list[str]:
    """A path or a list of paths as plain strings (JSON)."""
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    return [str(item) for item in value]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class OutputPaths:
    """``ctx.output``: temporary paths of the rule's outputs, by name or position.

    ``ctx.output.scores``, ``ctx.output("scores")`` and ``ctx.output["scores"]`` are the
    same path; ``ctx.output[0]`` is the first output's. The parent folder exists.
    """

    def __init__(self, context: RuleContext) -> None:
        self._context = context

    def __call__(self, key: str | int) -> Path:
        return self._context._temporary(key)

    def __getitem__(self, key: str | int) -> Path:
        return self._context._temporary(key)

    def __getattr__(self, name: str) -> Path:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._context._temporary(name)


class RuleContext:
    """What a script sees of its rule (built by :func:`rule_context`).

    Attributes:
        rule: The rule's name (None when unknown).
        attempt: Snakemake's attempt number (1 when the rule has no ``attempt`` resource).
        log_path: The rule's log file, or None.
        input, params, wildcards: The script object's own (``ctx.input.prompts``).
        output: Temporary paths of the outputs (:class:`OutputPaths`).
    """

    def __init__(self, job: Any) -> None:
        self.job = job
        self.rule: str | None = getattr(job, "rule", None)
        self.attempt: int = int(getattr(getattr(job, "resources", None), "attempt", 1) or 1)
        logs = _positional(getattr(job, "log", None))
        self.log_path: Path | None = Path(logs[0]) if logs else None
        self.input = getattr(job, "input", None)
        self.params = getattr(job, "params", None)
        self.wildcards = getattr(job, "wildcards", None)
        self.output = OutputPaths(self)
        self._named_outputs = {name: str(path) for name, path in _named(job.output).items()}
        self._all_outputs = [str(path) for path in _positional(job.output)]
        self._temporaries: dict[str, Path] = {}  # final path -> temporary path
        self._finals: dict[str, str] = {}  # every temporary handed out -> its final path
        self._direct: dict[str, bool] = {}  # final path written directly -> wants a sidecar
        self._fields: dict[str, Any] = {}

    # --- what scripts call -------------------------------------------------------------

    @property
    def final_paths(self) -> dict[str, Path]:
        """Final paths of the named outputs (reading them hands out and declares nothing)."""
        return {name: Path(path) for name, path in self._named_outputs.items()}

    def final(self, key: str | int, *, sidecar: bool = True) -> Path:
        """The final path of an output that the script (or a library) writes directly.

        No rename for it; its sidecar is still written unless ``sidecar=False`` (a
        folder gets ``provenance.json`` inside only when it has none).
        """
        final = self._final_of(key)
        if final in self._temporaries:
            raise ValueError(f"output {key!r} was already handed out as a temporary path")
        self._direct[final] = sidecar
        Path(final).parent.mkdir(parents=True, exist_ok=True)
        return Path(final)

    def provenance(self, **fields: Any) -> None:
        """Add fields to the sidecar of every output (later calls add or replace)."""
        self._fields.update(fields)

    def final_name(self, path: str | os.PathLike) -> str:
        """The output ``path`` stands for: its final name if it is one of this job's
        temporaries, else ``path`` itself."""
        return self._finals.get(os.path.normpath(path), str(path))

    def temporaries(self) -> dict[str, Path]:
        """Final path -> temporary path of every output handed out so far."""
        return dict(self._temporaries)

    # --- internals --------------------------------------------------------------------

    def _final_of(self, key: str | int) -> str:
        if isinstance(key, int):
            try:
                return self._all_outputs[key]
            except IndexError:
                raise KeyError(
                    f"rule {self.rule!r} has {len(self._all_outputs)} outputs; no output {key}"
                ) from None
        if key not in self._named_outputs:
            known = ", ".join(self._named_outputs) or "none"
            raise KeyError(f"rule {self.rule!r} has no output named {key!r} (named: {known})")
        return self._named_outputs[key]

    def _temporary(self, key: str | int) -> Path:
        final = self._final_of(key)
        if final in self._direct:
            raise ValueError(f"output {key!r} was declared as written directly (ctx.final)")
        if final not in self._temporaries:
            temporary = temporary_path(final)
            temporary.parent.mkdir(parents=True, exist_ok=True)
            _remove(temporary)  # left over from a killed attempt
            self._temporaries[final] = temporary
            self._finals[os.path.normpath(temporary)] = final
        return self._temporaries[final]

    def provenance_fields(self) -> dict[str, Any]:
        """The sidecar fields this context knows, before the environment is added."""
        params = plain_data(_named(self.params))
        seed = params.pop("seed", None)
        named_inputs = _named(self.input)
        inputs: dict[str, Any] = {name: _paths(value) for name, value in named_inputs.items()}
        named_paths = {
            path
            for value in inputs.values()
            for path in ([value] if isinstance(value, str) else value)
        }
        unnamed = [str(p) for p in _positional(self.input) if isinstance(p, (str, os.PathLike))]
        unnamed = [path for path in unnamed if path not in named_paths]
        if unnamed:
            inputs["unnamed"] = unnamed
        fields: dict[str, Any] = {"rule": self.rule}
        fields.update({name: str(value) for name, value in _named(self.wildcards).items()})
        if seed is not None:
            fields["seed"] = seed
        fields["params"] = params
        fields["inputs"] = inputs
        fields.update(self._fields)
        return fields

    def _clear_stale_sidecars(self) -> None:
        """Remove the sidecars of outputs that do not exist (Snakemake removed the
        results of an earlier run before this job): a failed job leaves none behind."""
        for final in self._all_outputs:
            if not Path(final).exists() and not is_provenance_file(final):
                sidecar_path(final).unlink(missing_ok=True)

    def _commit(self) -> None:
        """Check every output, write the sidecars, then rename the temporaries into place."""
        for final, temporary in self._temporaries.items():
            if not temporary.exists():
                raise MissingOutputError(
                    f"rule {self.rule!r} did not write its output {final} "
                    f"(nothing at its temporary path {temporary})"
                )
        handled = set(self._temporaries) | set(self._direct)
        for final in self._all_outputs:
            if final in handled:
                continue
            if not Path(final).exists():
                raise MissingOutputError(
                    f"rule {self.rule!r} did not write its output {final} (a script writes "
                    "outputs through ctx.output(name), or declares them with ctx.final(name))"
                )
            log.warning("output %s was written directly under its final name", final)
            self._direct[final] = True

        record = provenance_record(**self.provenance_fields())
        for final, temporary in self._temporaries.items():
            self._write_sidecar(final, temporary, record)
        for final, wanted in self._direct.items():
            if wanted and Path(final).exists():
                self._write_sidecar(final, Path(final), record)

        for final, temporary in self._temporaries.items():
            target = Path(final)
            if temporary.is_dir() and target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # os.replace only replaces an empty folder
            os.replace(temporary, target)
        self._temporaries.clear()

    @staticmethod
    def _write_sidecar(final: str, written: Path, record: dict[str, Any]) -> None:
        result = {"result": Path(final).name, **record}
        if written.is_dir():
            inside = written / FOLDER_PROVENANCE
            if not inside.exists():
                write_json(inside, result)
        elif not is_provenance_file(final):
            write_json(sidecar_path(final), result)

    def _discard(self) -> None:
        """Remove every temporary (after an exception)."""
        for temporary in self._temporaries.values():
            _remove(temporary)
        self._temporaries.clear()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM (Snakemake stopping a job) into SystemExit, so cleanup code runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _redirected(log_path: Path | None) -> Iterator[Any]:
    """stdout, stderr and the root logger into ``log_path`` (nothing when None)."""
    if log_path is None:
        yield sys.stderr
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with (
        open(log_path, "w", buffering=1) as log_file,
        contextlib.redirect_stdout(log_file),
        contextlib.redirect_stderr(log_file),
    ):
        handler = logging.StreamHandler(log_file)
        previous_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield log_file
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)


@contextlib.contextmanager
def rule_context(job: Any) -> Iterator[RuleContext]:
    """Run a script's body as its rule: log, atomic outputs, sidecars, one-line errors.

    Args:
        job: The ``snakemake`` object of a script (or a stand-in with ``log``,
            ``output``, ``input``, ``params``, ``wildcards``, ``rule``, ``resources``).

    Yields:
        The :class:`RuleContext`; see the module docstring.

    Raises:
        SystemExit: with status 1 after reporting an error (one line for user errors).
    """
    context = RuleContext(job)
    terminal = sys.stderr
    startup = process_age()
    with _redirected(context.log_path) as log_file:
        try:
            if context.rule is not None:
                logging.info("rule %s, attempt %d", context.rule, context.attempt)
            context._clear_stale_sidecars()
            check_injected_failure(context.rule, context.attempt)
            try:
                with _terminate_as_exit():
                    yield context
                    body_end = time.perf_counter()
                    context._commit()
                    write = time.perf_counter() - body_end
                if log_file is not terminal:
                    print(timing_line(startup, write, process_age()), file=log_file)
            except BaseException:
                context._discard()
                raise
        except UserFacingError as error:
            message = f"error: {error}"
            if log_file is not terminal:
                print(message, file=log_file)
            print(message, file=terminal)
            raise SystemExit(1) from None
        except Exception as error:
            if is_disk_full(error):
                written = context.final_name(error.filename) if error.filename else None
                message = f"error: {disk_full_message(error, context.rule, written)}"
                with contextlib.suppress(OSError):  # the log is on the full disk too
                    print(message, file=log_file)
                print(message, file=terminal)
                raise SystemExit(1) from None
            traceback.print_exc(file=log_file)
            where = (
                f"full traceback in {context.log_path}" if context.log_path else "traceback above"
            )
            print(f"error: {type(error).__name__}: {error} ({where})", file=terminal)
            raise SystemExit(1) from None
