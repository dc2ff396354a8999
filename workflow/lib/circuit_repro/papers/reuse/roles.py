"""Where each task puts the tokens that the reuse paper's head classes attend to.

Merullo et al. (2023) classify heads by what they attend to from the final position
(the answer: movers; the repeated token: inhibition heads) and from the repeated token
(its first mention: duplicate-token heads; the token after it: induction heads), and
force "IOI-like" attention onto the wrong answers in the intervention. Every task the
analysis reads is described by one :class:`TaskRoles` in :data:`TASK_ROLES`, so a new
task needs one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from circuit_repro.tasks.records import TaskRecord

Positions = Callable[[TaskRecord], list[int]]


@dataclass(frozen=True)
class TaskRoles:
    """Positions of a task's roles in a clean prompt (None: the task has no such role).

    Attributes:
        counterfactual: The corrupted prompt's name in ``record.counterfactuals``.
        answer: Token(s) the answer is copied from (IOI: the indirect object).
        repeated: The second mention of the token the model must not copy (IOI: S2;
            Colored Objects: the queried object).
        first_mention: The first mention of that token (IOI: S1; Colored Objects: the
            queried object in the list).
        wrong_answers: Tokens of the answers the model must not give (Colored Objects:
            the other colours); the intervention's attention target.
    """

    counterfactual: str
    answer: Positions
    repeated: Positions | None = None
    first_mention: Positions | None = None
    wrong_answers: Positions | None = None


def _role(name: str) -> Positions:
    return lambda record: [record.roles.position(name)]


def _queried_object(record: TaskRecord) -> list[int]:
    return [record.roles.position(f"OBJECT_{record.fields['query_index']}")]


def _other_colours(record: TaskRecord) -> list[int]:
    query = record.fields["query_index"]
    n_colours = len(record.fields["colors"])
    return [record.roles.position(f"COLOR_{k}") for k in range(n_colours) if k != query]


TASK_ROLES: dict[str, TaskRoles] = {
    "ioi": TaskRoles(
        counterfactual="flipped",
        answer=_role("IO"),
        repeated=_role("S2"),
        first_mention=_role("S1"),
        wrong_answers=_role("S1"),
    ),
    "colored_objects": TaskRoles(
        counterfactual="different_object",
        answer=_role("ANSWER_COLOR"),
        repeated=_role("QUERY_OBJECT"),
        first_mention=_queried_object,
        wrong_answers=_other_colours,
    ),
    "greater_than": TaskRoles(counterfactual="01", answer=_role("YY")),
    "facts": TaskRoles(counterfactual="other_subject", answer=_role("SUBJECT_LAST")),
}


def task_roles(task: str) -> TaskRoles:
    """The roles of ``task``; a clear error for a task the analysis does not know."""
    try:
        return TASK_ROLES[task]
    except KeyError:
        raise ValueError(
            f"the reuse analysis knows no task {task!r}; known: {', '.join(sorted(TASK_ROLES))}"
        ) from None


def attention_role_pairs(record: TaskRecord, roles: TaskRoles) -> dict[str, tuple[int, list[int]]]:
    """``{score name: (query position, key positions)}`` for the head classes' scores."""
    end = record.end
    pairs = {"end_to_answer": (end, roles.answer(record))}
    if roles.repeated is not None:
        repeated = roles.repeated(record)[0]
        first = roles.first_mention(record)
        pairs["end_to_repeated"] = (end, [repeated])
        pairs["repeated_to_first"] = (repeated, first)
        pairs["repeated_to_after_first"] = (repeated, [p + 1 for p in first])
    return pairs
