"""Shared helpers for the task generators (IOI, colored objects, greater-than, ...).

Every task generator produces *records*: plain JSON-serialisable dicts, one per prompt,
that the pipeline stores as JSONL. The helpers here cover what all tasks need:

* filtering candidate words to those the model's tokenizer encodes as a single token, so
  that an answer is one next-token prediction and counterfactual prompts keep the same
  length as the clean prompt;
* mapping character spans of role words (e.g. the subject's name) to token positions in
  the prompt as the model will see it, i.e. with the tokenizer's default special tokens
  (Gemma prepends ``<bos>``, SmolLM2 does not);
* reading and writing records as JSONL (:func:`write_jsonl`, :func:`read_jsonl` for
  dicts, :func:`read_records` for typed :class:`~circuit_repro.tasks.records.TaskRecord`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from circuit_repro.errors import UserFacingError
from circuit_repro.tasks.records import END_ROLE, RecordError, TaskRecord

# END_ROLE ("END", defined with the records and imported from here by the generators) is
# the role that :func:`token_positions` resolves to the last token of the prompt text,
# the position whose next-token logits score the answer.

#: Type of a character span ``(start, end)`` inside a prompt, end exclusive.
CharSpan = tuple[int, int]


class TaskTooSmallError(UserFacingError, ValueError):
    """Too few usable items remain after dropping those the tokenizer cannot handle.

    A :class:`~circuit_repro.errors.UserFacingError` (rules print it as one line, no
    traceback) and a :class:`ValueError` (the request does not fit this tokenizer).

    Raised by task generators when, after removing items whose answer or role words are
    not single tokens for the tokenizer, fewer items remain than the requested minimum.
    The message is a single line naming the task, the tokenizer, how many items survived
    out of how many were requested, and how to fix it.

    Attributes:
        task: Task name, e.g. ``"ioi"``.
        tokenizer_name: The tokenizer's ``name_or_path``.
        n_kept: Number of items that survived.
        n_requested: Number of items that were requested.
        min_required: The minimum number of items the caller asked for.
    """

    def __init__(
        self,
        task: str,
        tokenizer_name: str,
        n_kept: int,
        n_requested: int,
        min_required: int,
        detail: str = "",
    ) -> None:
        self.task = task
        self.tokenizer_name = tokenizer_name
        self.n_kept = n_kept
        self.n_requested = n_requested
        self.min_required = min_required
        self.detail = detail
        detail_part = f" ({detail})" if detail else ""
        message = (
            f"task '{task}': only {n_kept} of {n_requested} items survived the "
            f"single-token filter for tokenizer '{tokenizer_name}', fewer than the "
            f"required {min_required}{detail_part}; use a model whose tokenizer encodes "
            "these words as single tokens, or "
            + (
                f"lower tasks.{task}.n_prompts"
                if n_kept
                else f"disable the task (tasks.{task}.enabled: false)"
            )
        )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions are pickled from their ``args``; with a custom __init__ that would
        # call it with the message alone, so rebuild from the structured fields instead
        # (multiprocessing and some schedulers pickle exceptions).
        return (
            type(self),
            (
                self.task,
                self.tokenizer_name,
                self.n_kept,
                self.n_requested,
                self.min_required,
                self.detail,
            ),
        )


def required_count(n_prompts: int, min_prompts: int | None) -> int:
    """Validate a generator's size arguments; the fewest records it may return.

    Raises:
        ValueError: ``n_prompts`` < 1, or ``min_prompts`` outside ``[0, n_prompts]``.
    """
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be at least 1, got {n_prompts}")
    required = n_prompts if min_prompts is None else min_prompts
    if not 0 <= required <= n_prompts:
        raise ValueError(f"min_prompts must be between 0 and n_prompts={n_prompts}, got {required}")
    return required


def check_enough(
    task: str,
    tokenizer: Any,
    records: list[dict[str, Any]],
    n_prompts: int,
    required: int,
    detail: str = "",
) -> list[dict[str, Any]]:
    """Return ``records`` if there are at least ``required``, else raise
    :class:`TaskTooSmallError` naming the task, the tokenizer and ``detail``."""
    if len(records) < required:
        raise TaskTooSmallError(
            task,
            tokenizer_name(tokenizer),
            n_kept=len(records),
            n_requested=n_prompts,
            min_required=required,
            detail=detail,
        )
    return records


def tokenizer_name(tokenizer: Any) -> str:
    """Return a human-readable name for a tokenizer (its ``name_or_path``, if any).

    Args:
        tokenizer: A Hugging Face tokenizer.

    Returns:
        ``tokenizer.name_or_path`` when set, otherwise the tokenizer's class name.
    """
    name = getattr(tokenizer, "name_or_path", "") or ""
    return str(name) if name else type(tokenizer).__name__


def is_single_token(tokenizer: Any, text: str) -> bool:
    """Return whether ``text`` encodes to exactly one token id, without special tokens.

    Args:
        tokenizer: A Hugging Face tokenizer.
        text: The text to encode; for words that follow a space in a prompt, include the
            leading space (e.g. ``" Mary"``), because BPE vocabularies usually hold
            separate ids for ``"Mary"`` and ``" Mary"``.

    Returns:
        True when ``tokenizer(text, add_special_tokens=False)["input_ids"]`` has length 1
        and that id is not the tokenizer's unknown token: a word-level vocabulary maps
        every unknown word to the one ``<unk>`` id, which would make all such words
        indistinguishable to the model.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unknown_id = getattr(tokenizer, "unk_token_id", None)
    return len(ids) == 1 and (unknown_id is None or ids[0] != unknown_id)


def single_token_id(tokenizer: Any, text: str) -> int:
    """Return the one token id that ``text`` encodes to, without special tokens.

    Args:
        tokenizer: A Hugging Face tokenizer.
        text: Text expected to be a single token, e.g. ``" Mary"``.

    Returns:
        The token id.

    Raises:
        ValueError: If ``text`` is not a single token (see :func:`is_single_token`).
    """
    if not is_single_token(tokenizer, text):
        raise ValueError(
            f"{text!r} is not a single known token for tokenizer '{tokenizer_name(tokenizer)}'"
        )
    return int(tokenizer(text, add_special_tokens=False)["input_ids"][0])


def single_token_words(tokenizer: Any, words: Iterable[str], prefix: str = " ") -> tuple[str, ...]:
    """Keep the words that are a single token when written after ``prefix``.

    Args:
        tokenizer: A Hugging Face tokenizer.
        words: Candidate words, without the prefix (e.g. ``"Mary"``).
        prefix: Text put before each word when testing it; a space by default because
            role words sit mid-sentence after a space.

    Returns:
        The surviving words, in their original order (so that seeded sampling from the
        result is reproducible for a given tokenizer).
    """
    return tuple(word for word in words if is_single_token(tokenizer, prefix + word))


def encode_with_roles(
    tokenizer: Any, prompt: str, spans: Mapping[str, CharSpan | None]
) -> tuple[list[int], dict[str, int]]:
    """Tokenize ``prompt`` as the model sees it and locate the token of each role word.

    The prompt is encoded with the tokenizer's default special tokens, so positions are
    valid indices into the model's input (Gemma's leading ``<bos>`` shifts them by one,
    SmolLM2 adds nothing). A role's token is the first token whose character range
    contains the first non-space character of the role's span. This works whether the
    tokenizer reports the offset of a token such as ``" Mary"`` as starting at the space
    or at the ``"M"``.

    Args:
        tokenizer: A fast Hugging Face tokenizer (offset mappings are required).
        prompt: The prompt text.
        spans: Role name -> character span ``(start, end)`` of the role word in
            ``prompt``. The role :data:`END_ROLE` (``"END"``) is special: its span is
            ignored (may be ``None``) and it resolves to the last token of the prompt
            text, skipping any special token a tokenizer appends.

    Returns:
        The prompt's token ids and a dict role name -> token position.

    Raises:
        ValueError: If the tokenizer gives no offsets, a span is malformed or outside
            the prompt, or no token covers a role word.
    """
    try:
        encoding = tokenizer(prompt, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise ValueError(
            f"tokenizer '{tokenizer_name(tokenizer)}' cannot return offset mappings; "
            "a fast (Rust-backed) tokenizer is required to locate role tokens"
        ) from error
    input_ids = [int(token_id) for token_id in encoding["input_ids"]]
    offsets = [(int(start), int(end)) for start, end in encoding["offset_mapping"]]

    positions: dict[str, int] = {}
    for role, span in spans.items():
        if role == END_ROLE:
            positions[role] = _last_text_token(offsets, prompt, tokenizer)
            continue
        if span is None:
            raise ValueError(f"role {role!r} has no character span")
        start, end = span
        if not 0 <= start < end <= len(prompt):
            raise ValueError(
                f"role {role!r} has span {span} outside the prompt of length {len(prompt)}"
            )
        word_start = start
        while word_start < end and prompt[word_start].isspace():
            word_start += 1
        if word_start == end:
            raise ValueError(f"role {role!r} span {span} covers only whitespace")
        positions[role] = _token_covering(offsets, word_start, role, prompt, tokenizer)
    return input_ids, positions


def token_positions(
    tokenizer: Any, prompt: str, spans: Mapping[str, CharSpan | None]
) -> dict[str, int]:
    """Return the token position of each role word in ``tokenizer(prompt)``.

    See :func:`encode_with_roles` for how positions are determined; this is the same
    without returning the token ids.

    Args:
        tokenizer: A fast Hugging Face tokenizer.
        prompt: The prompt text.
        spans: Role name -> character span ``(start, end)``; ``"END"`` means the last
            token of the prompt and its span is ignored.

    Returns:
        Role name -> index into ``tokenizer(prompt)["input_ids"]``.

    Raises:
        ValueError: If a role word is not covered by any token.
    """
    return encode_with_roles(tokenizer, prompt, spans)[1]


def _token_covering(
    offsets: Sequence[CharSpan], char_index: int, role: str, prompt: str, tokenizer: Any
) -> int:
    """Return the first token whose character range contains ``char_index``."""
    for position, (start, end) in enumerate(offsets):
        # Special tokens have empty ranges such as (0, 0) and never match.
        if start <= char_index < end:
            return position
    raise ValueError(
        f"no token of tokenizer '{tokenizer_name(tokenizer)}' covers role {role!r} at "
        f"character {char_index} of prompt {prompt!r}"
    )


def _last_text_token(offsets: Sequence[CharSpan], prompt: str, tokenizer: Any) -> int:
    """Return the position of the last token that covers prompt text (not a special)."""
    for position in range(len(offsets) - 1, -1, -1):
        start, end = offsets[position]
        if end > start:
            return position
    raise ValueError(
        f"tokenizer '{tokenizer_name(tokenizer)}' produced no text tokens for prompt {prompt!r}"
    )


def write_jsonl(
    records: Iterable[Mapping[str, Any] | TaskRecord], path: str | os.PathLike[str]
) -> None:
    """Write records to ``path`` as JSON Lines, one record per line.

    The file is written to a temporary sibling and renamed into place, so an interrupted
    run never leaves a truncated file that looks complete. Parent folders are created.

    Args:
        records: JSON-serialisable dicts, or :class:`TaskRecord` objects (written as
            their :meth:`~TaskRecord.to_dict`).
        path: Output file path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A plain open() (not tempfile.mkstemp) so the file gets the usual umask permissions
    # rather than owner-only ones; the pid keeps concurrent writers apart.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                if isinstance(record, TaskRecord):
                    record = record.to_dict()
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read records written by :func:`write_jsonl`.

    Args:
        path: JSONL file path.

    Returns:
        The records, in file order; blank lines are skipped.
    """
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_records(path: str | os.PathLike[str]) -> list[TaskRecord]:
    """Read a task's JSONL file (see :func:`write_jsonl`) as typed records.

    Args:
        path: JSONL file path.

    Returns:
        The records, in file order; blank lines are skipped.

    Raises:
        RecordError: A line is not a JSON object (a corrupted or truncated file) or a
            record lacks a field; the one-line message names the file and line number.
    """
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecordError(
                    f"{path}:{line_number}: not a JSON record ({error.msg} at column "
                    f"{error.colno}); the file is corrupted or truncated, rebuild it"
                ) from None
            try:
                records.append(TaskRecord.from_dict(data))
            except RecordError as error:
                raise RecordError(f"{path}:{line_number}: {error}") from None
    return records
