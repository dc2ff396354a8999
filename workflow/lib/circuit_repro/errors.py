"""Exceptions whose message is written for the user: it names the problem and the fix."""


class UserFacingError(Exception):
    """Base class for errors caused by input (config, registry, model, task), not bugs.

    Rules show these as one line (see :mod:`circuit_repro.pipeline.rule_context`).
    """
