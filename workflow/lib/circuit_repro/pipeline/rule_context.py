"""Glue between Snakemake rules and the library: logging and one-line user errors.

Scripts under ``workflow/scripts`` wrap their few lines in :func:`logged_rule`, which
sends output (including progress bars) to the rule's log file, and turns the errors a
user can cause (a model that cannot be fetched, a task the tokenizer cannot express,
a bad config) into one line on the terminal instead of a traceback. Anything else is
a bug: its traceback goes to the log.

Fault injection (for testing retries): with the environment variable
``CIRCUIT_REPRO_FAIL_ONCE`` set to a rule name (or several, comma-separated), the first
attempt of every job of that rule fails with :class:`InjectedFailure`; later attempts
(``snakemake --retries``) run normally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from circuit_repro.errors import UserFacingError

FAIL_ONCE_VARIABLE = "CIRCUIT_REPRO_FAIL_ONCE"


class InjectedFailure(UserFacingError):
    """The failure requested by ``CIRCUIT_REPRO_FAIL_ONCE`` (testing retries)."""


def check_injected_failure(rule: str | None, attempt: int) -> None:
    """Raise :class:`InjectedFailure` on attempt 1 of a rule named in ``CIRCUIT_REPRO_FAIL_ONCE``."""
    names = {name.strip() for name in os.environ.get(FAIL_ONCE_VARIABLE, "").split(",")}
    if rule is not None and rule in names and attempt == 1:
        raise InjectedFailure(
            f"injected failure of rule {rule!r} on attempt {attempt} "
            f"({FAIL_ONCE_VARIABLE}={os.environ[FAIL_ONCE_VARIABLE]}); a retry will succeed"
        )


@contextlib.contextmanager
def logged_rule(
    log_path: str | Path | None, *, rule: str | None = None, attempt: int = 1
) -> Iterator[None]:
    """Run a rule body with stdout/stderr sent to ``log_path``.

    Args:
        log_path: The rule's log file (None: no redirection).
        rule: The rule's name (``snakemake.rule``), for fault injection.
        attempt: Snakemake's attempt number, written to the log and used for fault
            injection. Scripts pass ``snakemake.resources.attempt`` (the script object
            has no attempt of its own; :func:`circuit_repro.pipeline.resources.resource_functions`
            adds it as a resource).

    Raises:
        SystemExit: with status 1 after reporting an error (one line for user errors).
    """
    terminal = sys.stderr
    if log_path is None:
        check_injected_failure(rule, attempt)
        yield
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "w", buffering=1) as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        try:
            if rule is not None:
                logging.info("rule %s, attempt %d", rule, attempt)
            check_injected_failure(rule, attempt)
            yield
        except UserFacingError as error:
            message = f"error: {error}"
            print(message, file=log)
            print(message, file=terminal)
            raise SystemExit(1) from None
        except Exception as error:
            traceback.print_exc(file=log)
            print(
                f"error: {type(error).__name__}: {error} (full traceback in {log_path})",
                file=terminal,
            )
            raise SystemExit(1) from None
        finally:
            logging.getLogger().removeHandler(handler)
