"""Glue between Snakemake rules and the library: logging and one-line user errors.

Scripts under ``workflow/scripts`` wrap their few lines in :func:`logged_rule`, which
sends output (including progress bars) to the rule's log file, and turns the errors a
user can cause (a model that cannot be fetched, a task the tokenizer cannot express,
a bad config) into one line on the terminal instead of a traceback. Anything else is
a bug: its traceback goes to the log.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from circuit_repro.errors import UserFacingError


@contextlib.contextmanager
def logged_rule(log_path: str | Path | None) -> Iterator[None]:
    """Run a rule body with stdout/stderr sent to ``log_path``.

    Raises:
        SystemExit: with status 1 after reporting an error (one line for user errors).
    """
    terminal = sys.stderr
    if log_path is None:
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
