"""Task records as typed objects: a prompt, its answers, role positions and counterfactuals.

Every task generator (IOI, colored objects, greater-than, ...) writes one JSON object per
prompt. :class:`TaskRecord` is the typed form of that object: the fields every task has
(``task``, ``id``, ``prompt``, ``answer``, ``wrong_answer``, ``candidates``, ``correct``,
``roles``, ``counterfactuals``) are attributes, and a task's own extras (IOI's
``template`` and ``names``, colored objects' ``query_index``, ...) stay in ``fields``::

    record = TaskRecord.from_dict(generate_ioi(tokenizer, n_prompts=8, seed=0)[0])
    record.end                                   # position whose logits score the answer
    record.roles.position("S2")                  # token position of the repeated subject
    record.counterfactual("flipped").prompt      # the corrupted run for patching
    record.to_dict()                             # exactly the generator's dict again

Positions are token indices into ``tokenizer(prompt).input_ids``, the prompt encoded with
the tokenizer's *default* special tokens, i.e. as the model sees it: Gemma prepends
``<bos>`` (every position shifts by one), SmolLM2 adds nothing.

Records are immutable: :class:`Roles` and the mappings of a record are read-only, and
``to_dict`` returns a fresh copy, so a consumer that edits the dict it gets cannot change
the record.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from circuit_repro.errors import UserFacingError

#: Role name of the position whose next-token logits score the answer: the last token of
#: the prompt text. Every record and every counterfactual has it.
END_ROLE = "END"

V = TypeVar("V")


class RecordError(UserFacingError, ValueError):
    """A task record lacks a required field or has one of the wrong type.

    The message is one line naming the record (its id and task, when known) and the
    field, e.g. ``task record 3 (ioi): field 'roles.S2' must be ...``.
    """


class RoleNotFoundError(KeyError):
    """A role the record does not have; the message lists the roles it has."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class CounterfactualNotFoundError(KeyError):
    """A counterfactual the record does not have; the message lists those it has."""

    def __str__(self) -> str:
        return str(self.args[0])


class FrozenMap(Mapping[str, V]):
    """A read-only, picklable mapping from names to values (a copy of what it was given)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, V] | None = None) -> None:
        self._data: dict[str, V] = dict(data or {})

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._data,))

    # Mapping's __eq__ compares items with any Mapping, so FrozenMap({"a": 1}) == {"a": 1}.
    __hash__ = None  # type: ignore[assignment]


class Roles(FrozenMap[int]):
    """Role name -> token position in one prompt, immutable.

    A role names a token the analyses look at, e.g. IOI's ``"IO"``, ``"S1"``, ``"S2"``,
    colored objects' ``"QUERY_OBJECT"``. :data:`END_ROLE` (``"END"``) is the last token of
    the prompt, whose next-token logits score the answer.

    Positions index ``tokenizer(prompt).input_ids`` with the tokenizer's default special
    tokens (Gemma's leading ``<bos>`` counts, so its positions are one more than
    SmolLM2's for the same text).

    ``roles["IO"]`` and ``roles.position("IO")`` are the same; both raise
    :class:`RoleNotFoundError` (a :class:`KeyError`) naming the missing role and the
    roles available.

    Raises:
        TypeError: A role name is not a string.
        ValueError: A position is not a non-negative integer (booleans are rejected).
    """

    __slots__ = ()

    def __init__(self, positions: Mapping[str, int] | None = None) -> None:
        checked: dict[str, int] = {}
        for name, position in (positions or {}).items():
            if not isinstance(name, str):
                raise TypeError(f"role names must be strings, got {name!r}")
            checked[name] = _position(name, position)
        super().__init__(checked)

    def __getitem__(self, name: str) -> int:
        return self.position(name)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def position(self, name: str) -> int:
        """The token position of role ``name``.

        Raises:
            RoleNotFoundError: No such role; the message lists the available ones.
        """
        try:
            return self._data[name]
        except KeyError:
            available = ", ".join(self._data) or "none"
            raise RoleNotFoundError(f"no role {name!r}; roles available: {available}") from None

    @property
    def end(self) -> int:
        """Position of :data:`END_ROLE`: the token whose next-token logits score the answer."""
        return self.position(END_ROLE)

    def to_dict(self) -> dict[str, int]:
        """The roles as a plain dict (a copy), in their original order."""
        return dict(self._data)


def _position(name: str, position: Any) -> int:
    """Validate one role position; return it as a plain int."""
    if not isinstance(position, bool):
        try:
            value = operator.index(position)  # int, or a NumPy/torch integer
        except TypeError:
            pass
        else:
            if value >= 0:
                return value
    raise ValueError(f"role {name!r} must be a non-negative integer position, got {position!r}")


@dataclass(frozen=True)
class Counterfactual:
    """A variant of a record's prompt, run alongside the clean one for patching.

    Examples: IOI's ``flipped`` (S2 replaced by the IO name, so the answers swap) and
    ``abc`` (three fresh names, no answer of its own), greater-than's ``"01"``.

    Attributes:
        prompt: The counterfactual prompt text.
        roles: Role positions in ``tokenizer(prompt).input_ids`` (default special tokens
            included); :meth:`from_dict` requires ``END``. Generators align counterfactuals
            with the clean prompt (same token length, same ``END``) so activations can be
            patched position by position; MCQA's ``numbers`` labels are the documented
            exception for per-digit tokenizers (see its ``same_length`` field).
        answer: The correct next token for this prompt, or None when the counterfactual
            has no answer of its own (then it is scored with the clean record's answers).
        wrong_answer: The contrasting next token, or None.
        fields: Every other key of the counterfactual's dict (e.g. IOI ``abc``'s
            ``names``, colored objects' ``candidates`` and ``query_index``), as JSON
            values.
    """

    prompt: str
    roles: Roles
    answer: str | None = None
    wrong_answer: str | None = None
    fields: Mapping[str, Any] = field(default_factory=FrozenMap)

    #: Keys that are attributes; all others go to ``fields``.
    CORE: ClassVar[tuple[str, ...]] = ("prompt", "answer", "wrong_answer", "roles")

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", _as_roles(self.roles))
        object.__setattr__(self, "fields", _as_fields(self.fields, self.CORE))

    @property
    def end(self) -> int:
        """Position of ``END`` in this prompt."""
        return self.roles.end

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counterfactual:
        """Build a counterfactual from its dict, as a generator writes it.

        Raises:
            RecordError: A required key is missing or has the wrong type.
        """
        return cls._from_dict(data, "counterfactual", "")

    @classmethod
    def _from_dict(cls, data: Any, where: str, path: str) -> Counterfactual:
        """:meth:`from_dict`; errors say ``{where}: field '{path}<key>'``."""
        if not isinstance(data, Mapping):
            raise RecordError(
                f"{where}: field '{path.rstrip('.')}' must be an object, got {_type_name(data)}"
            )
        counterfactual = cls(
            prompt=_required(data, "prompt", str, where, path),
            roles=_roles(data, where, path),
            answer=_optional(data, "answer", where, path),
            wrong_answer=_optional(data, "wrong_answer", where, path),
            fields={k: copy.deepcopy(v) for k, v in data.items() if k not in cls.CORE},
        )
        # The dict's key order, kept so that to_dict writes the same dict back; not part
        # of the value (equality ignores it, dataclasses.replace drops it).
        object.__setattr__(counterfactual, "_layout", tuple(data))
        return counterfactual

    def to_dict(self) -> dict[str, Any]:
        """The counterfactual as a JSON-serialisable dict, in its original key order.

        ``answer`` and ``wrong_answer`` are left out when None.
        """
        values: dict[str, Any] = {"prompt": self.prompt}
        if self.answer is not None:
            values["answer"] = self.answer
        if self.wrong_answer is not None:
            values["wrong_answer"] = self.wrong_answer
        values.update(copy.deepcopy(dict(self.fields)))
        values["roles"] = self.roles.to_dict()
        return _in_order(values, getattr(self, "_layout", ()))


@dataclass(frozen=True)
class TaskRecord:
    """One prompt of a task with its answers, role positions and counterfactuals.

    Build one from a generator's dict with :meth:`from_dict`; :meth:`to_dict` gives that
    dict back unchanged (same keys, same values, same order), which is what the JSONL
    files hold.

    Attributes:
        task: Task name, e.g. ``"ioi"`` (the generator's name: both ICL label sets say
            ``"icl"``).
        id: Record number within its data set, ``0..n-1``.
        prompt: The prompt text; it ends right before the answer.
        answer: The correct next token as text, e.g. ``" Mary"`` (leading space included
            where the tokenizer writes one).
        wrong_answer: The contrasting next token for logit differences, e.g. ``" John"``.
        roles: Token positions of the prompt's role words in
            ``tokenizer(prompt).input_ids``, encoded with the tokenizer's default special
            tokens; ``roles.end`` scores the answer.
        counterfactuals: Name -> :class:`Counterfactual`, the prompts patched against
            this one.
        candidates: The answer options the task scores among (e.g. the three listed
            colours). A generator that writes none (IOI) gets ``(answer, wrong_answer)``.
        correct: The candidates that count as right (greater-than has several). A
            generator that writes none gets ``(answer,)``.
        fields: Every other key of the generator's dict (``template``, ``order``,
            ``names``, ``query_index``, ``colors``, ...), as JSON values.
    """

    task: str
    id: int
    prompt: str
    answer: str
    wrong_answer: str
    roles: Roles
    counterfactuals: Mapping[str, Counterfactual] = field(default_factory=FrozenMap)
    candidates: tuple[str, ...] = ()
    correct: tuple[str, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=FrozenMap)

    #: Keys that are attributes; all others go to ``fields``.
    CORE: ClassVar[tuple[str, ...]] = (
        "task",
        "id",
        "prompt",
        "answer",
        "wrong_answer",
        "candidates",
        "correct",
        "roles",
        "counterfactuals",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", _as_roles(self.roles))
        for name, counterfactual in self.counterfactuals.items():
            if not isinstance(counterfactual, Counterfactual):
                raise TypeError(
                    f"counterfactual {name!r} must be a Counterfactual, got "
                    f"{type(counterfactual).__name__} (use Counterfactual.from_dict)"
                )
        object.__setattr__(self, "counterfactuals", FrozenMap(self.counterfactuals))
        # Empty means "not given": the task scores answer against wrong_answer.
        candidates = tuple(self.candidates) or (self.answer, self.wrong_answer)
        object.__setattr__(self, "candidates", candidates)
        object.__setattr__(self, "correct", tuple(self.correct) or (self.answer,))
        object.__setattr__(self, "fields", _as_fields(self.fields, self.CORE))

    @property
    def end(self) -> int:
        """Position of ``END``: the token whose next-token logits score the answer."""
        return self.roles.end

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the candidates: ``len(correct) / len(candidates)``."""
        return len(self.correct) / len(self.candidates)

    def counterfactual(self, name: str) -> Counterfactual:
        """The counterfactual called ``name``.

        Raises:
            CounterfactualNotFoundError: No such counterfactual; the message names the
                record and lists the counterfactuals it has.
        """
        try:
            return self.counterfactuals[name]
        except KeyError:
            available = ", ".join(self.counterfactuals) or "none"
            raise CounterfactualNotFoundError(
                f"{_describe(self.id, self.task)} has no counterfactual {name!r}; "
                f"counterfactuals available: {available}"
            ) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRecord:
        """Build a record from a generator's dict (or one JSONL line, parsed).

        Raises:
            RecordError: A required field is missing or has the wrong type; the one-line
                message names the record id and the field.
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"a task record must be a JSON object, got {type(data).__name__}")
        record_id = data.get("id")
        task = data.get("task")
        where = _describe(
            record_id if _is_int(record_id) else None, task if isinstance(task, str) else None
        )
        if "counterfactuals" not in data:
            raise RecordError(f"{where}: field 'counterfactuals' is missing")
        counterfactuals = data["counterfactuals"]
        if not isinstance(counterfactuals, Mapping):
            raise RecordError(
                f"{where}: field 'counterfactuals' must be an object of name -> counterfactual, "
                f"got {type(counterfactuals).__name__}"
            )
        record = cls(
            task=_required(data, "task", str, where),
            id=_required(data, "id", int, where),
            prompt=_required(data, "prompt", str, where),
            answer=_required(data, "answer", str, where),
            wrong_answer=_required(data, "wrong_answer", str, where),
            roles=_roles(data, where),
            counterfactuals={
                name: Counterfactual._from_dict(counterfactual, where, f"counterfactuals.{name}.")
                for name, counterfactual in counterfactuals.items()
            },
            candidates=_strings(data, "candidates", where),
            correct=_strings(data, "correct", where),
            fields={k: copy.deepcopy(v) for k, v in data.items() if k not in cls.CORE},
        )
        # Key order and which optional keys the dict had, for to_dict (see Counterfactual).
        object.__setattr__(record, "_layout", tuple(data))
        return record

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-serialisable dict: for a record made by :meth:`from_dict`,
        exactly the dict it was made from (same key order, ``candidates`` and ``correct``
        left out when that dict had none)."""
        layout: tuple[str, ...] | None = getattr(self, "_layout", None)
        values: dict[str, Any] = {
            "task": self.task,
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "wrong_answer": self.wrong_answer,
        }
        for key in ("candidates", "correct"):
            if layout is None or key in layout:
                values[key] = list(getattr(self, key))
        values.update(copy.deepcopy(dict(self.fields)))
        values["roles"] = self.roles.to_dict()
        values["counterfactuals"] = {
            name: counterfactual.to_dict() for name, counterfactual in self.counterfactuals.items()
        }
        return _in_order(values, layout or ())


def _describe(record_id: int | None, task: str | None) -> str:
    """``"task record 3 (ioi)"``, or as much of it as is known."""
    name = "task record" if record_id is None else f"task record {record_id}"
    return name if task is None else f"{name} ({task})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A value for an error message: its type and value (``str '3'``), or ``null``."""
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _required(data: Mapping[str, Any], key: str, kind: type, where: str, path: str = "") -> Any:
    """``data[key]`` checked to be of ``kind``; a :class:`RecordError` otherwise."""
    if key not in data:
        raise RecordError(f"{where}: field '{path}{key}' is missing")
    value = data[key]
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        wanted = {str: "a string", int: "an integer"}[kind]
        raise RecordError(f"{where}: field '{path}{key}' must be {wanted}, got {_shown(value)}")
    return value


def _optional(data: Mapping[str, Any], key: str, where: str, path: str) -> str | None:
    """``data[key]`` if present (then it must be a string), else None."""
    return _required(data, key, str, where, path) if key in data else None


def _strings(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    """An optional non-empty list of strings; ``()`` when absent."""
    if key not in data:
        return ()
    value = data[key]
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(item, str) for item in value)
    ):
        raise RecordError(
            f"{where}: field '{key}' must be a non-empty list of strings, got {value!r}"
        )
    return tuple(value)


def _roles(data: Mapping[str, Any], where: str, path: str = "") -> Roles:
    """``data["roles"]`` as :class:`Roles`, which must include ``END``."""
    field_name = f"{where}: field '{path}roles'"
    if "roles" not in data:
        raise RecordError(f"{field_name} is missing")
    value = data["roles"]
    if not isinstance(value, Mapping):
        raise RecordError(
            f"{field_name} must be an object of role name -> token position, "
            f"got {_type_name(value)}"
        )
    try:
        roles = Roles(value)
    except (TypeError, ValueError) as error:
        raise RecordError(f"{field_name}: {error}") from None
    if END_ROLE not in roles:
        raise RecordError(
            f"{field_name} has no {END_ROLE!r} role (the position that scores the answer); "
            f"roles: {', '.join(roles) or 'none'}"
        )
    return roles


def _as_roles(roles: Mapping[str, int]) -> Roles:
    return roles if isinstance(roles, Roles) else Roles(roles)


def _as_fields(fields: Mapping[str, Any], core: tuple[str, ...]) -> FrozenMap[Any]:
    clash = [key for key in fields if key in core]
    if clash:
        raise ValueError(f"fields {clash} are attributes, not extra fields")
    return fields if isinstance(fields, FrozenMap) else FrozenMap(fields)


def _in_order(values: dict[str, Any], layout: tuple[str, ...]) -> dict[str, Any]:
    """``values`` with the keys of ``layout`` first, in that order, then the rest."""
    ordered = {key: values[key] for key in layout if key in values}
    ordered.update((key, value) for key, value in values.items() if key not in ordered)
    return ordered
