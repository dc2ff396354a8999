"""Claims as data, judged by one verdict policy for every paper and model.

Each paper ships a claims file (``papers/<paper>/claims.yaml``): for every headline
claim its id, text, the paper's model, the paper's value and where it comes from
(table, figure or section; ``secondary`` when taken from elsewhere), the kind of
comparison and, for value claims, a tolerance with a one-line reason. The paper's code
only *measures* (:class:`Measurement`: our estimate, its 95% CI, what was counted);
:func:`judge` alone decides the verdict, by the policy below (docs/architecture.md and
the report's claims page say the same):

- ``direction`` claims (A above B, an effect above zero, a dissociation): the estimate
  is a difference. Reproduced when its CI lies on the paper's side of zero; not
  reproduced when it lies on the other side; inconclusive when it contains zero.
- ``value`` claims, an equivalence test: reproduced when the whole CI lies within the
  paper's value plus or minus the tolerance; when the CI lies wholly outside that
  band, partly if the direction or ordering the claims file names still holds, else
  not reproduced; inconclusive when the CI straddles the band's edge (the rule says
  about how many items would resolve it). A wide CI never makes a claim easier to
  reproduce: only a CI inside the band reproduces.
- A ``mechanism`` claim (which components carry a behaviour, circuit overlap)
  measured on a task whose baseline accuracy CI comes within
  :data:`~circuit_repro.engine.behaviour.NEAR_CHANCE_MARGIN` of chance is
  ``inconclusive: model at chance``, whatever the numbers. ``behaviour`` claims (an
  intervention that changes accuracy) are not gated.
- ``not applicable`` only when the claim cannot be posed on the architecture; an
  analysis that finds no component of the kind a claim is about gives
  ``not reproduced`` with that reason.

This module is torch-free.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from circuit_repro.errors import UserFacingError

KINDS = ("direction", "value")
SCOPES = ("mechanism", "behaviour")
VERDICTS = (
    "reproduced",
    "partly",
    "not reproduced",
    "inconclusive",
    "inconclusive: model at chance",
    "not applicable",
)

CLAIM_COLUMNS = [
    "paper",
    "model",
    "claim_id",
    "claim",
    "kind",
    "scope",
    "paper_model",
    "paper_value",
    "source",
    "our_value",
    "ci_low",
    "ci_high",
    "n",
    "verdict",
    "rule",
    "baseline_task",
    "baseline_accuracy",
    "baseline_chance",
    "note",
]
"""Columns of every paper's claims.csv (one row per claim and model)."""


class ClaimsFileError(UserFacingError, ValueError):
    """A claims file that does not follow the format (names the file and the field)."""


@dataclass(frozen=True)
class Claim:
    """One headline claim of a paper, as its claims file states it.

    Attributes:
        id: Stable identifier (``overlap``), unique within the paper.
        text: The claim in words.
        kind: ``direction`` or ``value`` (see the module docstring).
        scope: ``mechanism`` (gated on the model doing the task) or ``behaviour``.
        paper_model: The model the paper measured it on.
        paper_value: The paper's number (for direction claims: its observed difference,
            or NaN when the paper states only the direction); the file may write it as a
            fraction of counts (``3/18``).
        source: Where the number is in the paper, or ``secondary: <where>``.
        tasks: Tasks whose baselines gate a mechanism claim.
        tolerance: Half-width of the equivalence band (value claims).
        sign: The paper's side of zero for direction claims: ``positive`` or ``negative``.
        reason: One line: why this kind and tolerance.
        holds: Value claims: the direction or ordering that earns ``partly`` when the CI
            misses the band (e.g. "above every control overlap").
    """

    id: str
    text: str
    kind: str
    scope: str
    paper_model: str
    paper_value: float
    source: str
    reason: str
    tasks: tuple[str, ...] = ()
    tolerance: float | None = None
    sign: str = "positive"
    holds: str = ""


@dataclass(frozen=True)
class Measurement:
    """What a paper's analysis measured for one claim on one model.

    Attributes:
        claim_id: The claim measured.
        value: Our estimate (for direction claims: the difference, paper's sign).
        ci_low, ci_high: Its 95% CI.
        n: Items behind the CI (prompts, heads), for the "how many would be needed" line.
        holds: Value claims: whether the claim's ``holds`` ordering is true here.
        missing: Set when the analysis found nothing to measure (no head of the kind):
            the reason, and the claim is ``not reproduced``.
        not_applicable: Set when the claim cannot be posed on this architecture: why.
        note: What was measured, in words (heads, counts, the other numbers).
        baseline_task: The task whose baseline is shown beside the claim.
    """

    claim_id: str
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int | None = None
    holds: bool | None = None
    missing: str | None = None
    not_applicable: str | None = None
    note: str = ""
    baseline_task: str | None = None


def _require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise ClaimsFileError(f"{where}: missing field {key!r}")
    return entry[key]


def _number(value: Any, where: str) -> float:
    """A number, or a fraction written as the paper counts it (``3/18``)."""
    if isinstance(value, str) and value.count("/") == 1:
        numerator, denominator = value.split("/")
        try:
            return float(numerator) / float(denominator)
        except (ValueError, ZeroDivisionError):
            pass
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ClaimsFileError(f"{where}: paper_value {value!r} is not a number") from None


def _paper_value(entry: Mapping[str, Any], kind: str, where: str) -> float:
    """The paper's number; a direction claim whose paper states no number (only the
    direction, e.g. "seriously damages") writes ``paper_value: null`` and gets NaN."""
    value = _require(entry, "paper_value", where)
    if value is None:
        if kind != "direction":
            raise ClaimsFileError(f"{where}: only a direction claim may have no paper_value")
        return math.nan
    return _number(value, where)


def load_claims(path: str | Path) -> dict[str, Claim]:
    """Read and check a claims file; ``{claim id: Claim}`` in file order.

    Raises:
        ClaimsFileError: one line naming the file, the claim and the field.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ClaimsFileError(f"claims file {path}: cannot be read ({error})") from None
    claims: dict[str, Claim] = {}
    for index, entry in enumerate((document or {}).get("claims", [])):
        where = f"claims file {path}, claim {entry.get('id', index)!r}"
        kind = _require(entry, "kind", where)
        scope = _require(entry, "scope", where)
        if kind not in KINDS:
            raise ClaimsFileError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if scope not in SCOPES:
            raise ClaimsFileError(f"{where}: scope {scope!r} is not one of {', '.join(SCOPES)}")
        if kind == "value" and entry.get("tolerance") is None:
            raise ClaimsFileError(f"{where}: a value claim needs a tolerance")
        if scope == "mechanism" and not entry.get("tasks"):
            raise ClaimsFileError(f"{where}: a mechanism claim needs the tasks that gate it")
        if entry.get("sign", "positive") not in ("positive", "negative"):
            raise ClaimsFileError(f"{where}: sign must be positive or negative")
        claim = Claim(
            id=_require(entry, "id", where),
            text=_require(entry, "text", where),
            kind=kind,
            scope=scope,
            paper_model=_require(entry, "paper_model", where),
            paper_value=_paper_value(entry, kind, where),
            source=_require(entry, "source", where),
            reason=_require(entry, "reason", where),
            tasks=tuple(entry.get("tasks", ())),
            tolerance=entry.get("tolerance"),
            sign=entry.get("sign", "positive"),
            holds=entry.get("holds", ""),
        )
        if claim.id in claims:
            raise ClaimsFileError(f"{where}: duplicate claim id")
        claims[claim.id] = claim
    if not claims:
        raise ClaimsFileError(f"claims file {path}: no claims")
    return claims


def _finite(*numbers: float) -> bool:
    return all(number is not None and math.isfinite(number) for number in numbers)


def items_needed(measurement: Measurement, edge: float) -> int | None:
    """About how many items would make the CI clear ``edge``.

    The CI's reach towards the edge (estimate to the CI bound on the edge's side; a
    bootstrap CI need not be symmetric) shrinks like 1/sqrt(n), so clearing an edge at
    distance d needs about ``n * (reach / d) ** 2`` items. None when unknown (no ``n``,
    or the estimate sits on the edge).
    """
    bound = measurement.ci_low if edge < measurement.value else measurement.ci_high
    half_width = abs(measurement.value - bound)
    distance = abs(measurement.value - edge)
    if measurement.n is None or distance == 0 or not _finite(half_width, distance):
        return None
    return math.ceil(measurement.n * (half_width / distance) ** 2)


def _format(value: float) -> str:
    return f"{value:.3g}" if _finite(value) else "none"


def _judge_direction(claim: Claim, m: Measurement) -> tuple[str, str]:
    side = "above" if claim.sign == "positive" else "below"
    ci = f"[{_format(m.ci_low)}, {_format(m.ci_high)}]"
    sign = 1 if claim.sign == "positive" else -1
    low, high = sorted((sign * m.ci_low, sign * m.ci_high))
    if low > 0:
        return "reproduced", f"direction: the 95% CI {ci} lies {side} zero, the paper's side"
    if high < 0:
        return "not reproduced", f"direction: the 95% CI {ci} lies on the other side of zero"
    return "inconclusive", f"direction: the 95% CI {ci} contains zero"


#: Slack on the band's edges so that decimal values (0.8 - 0.1) land where written.
EDGE_SLACK = 1e-9


def _judge_value(claim: Claim, m: Measurement) -> tuple[str, str]:
    low_edge = claim.paper_value - claim.tolerance - EDGE_SLACK
    high_edge = claim.paper_value + claim.tolerance + EDGE_SLACK
    band = f"{claim.paper_value:.3g} ± {claim.tolerance:.3g}"
    ci = f"[{_format(m.ci_low)}, {_format(m.ci_high)}]"
    if low_edge <= m.ci_low and m.ci_high <= high_edge:
        return "reproduced", f"value: the 95% CI {ci} lies within {band}"
    if m.ci_high < low_edge or m.ci_low > high_edge:
        if m.holds:
            return "partly", f"value: the 95% CI {ci} lies outside {band}, but {claim.holds}"
        missed = f"; and not {claim.holds}" if claim.holds else ""
        return "not reproduced", f"value: the 95% CI {ci} lies outside {band}{missed}"
    edge = low_edge if m.ci_low < low_edge else high_edge
    needed = items_needed(m, edge)
    more = f"; about {needed} items would resolve it" if needed else ""
    return "inconclusive", f"value: the 95% CI {ci} straddles the edge of {band}{more}"


def judge(
    claim: Claim, measurement: Measurement, baselines: Mapping[str, Mapping[str, Any]]
) -> tuple[str, str]:
    """The verdict on one measured claim and the rule that decided, in words.

    Args:
        claim: The claim from the claims file.
        measurement: What the analysis measured.
        baselines: ``{task: baseline summary}`` (the baseline rule's JSON: ``accuracy``,
            ``accuracy_ci_low``, ``chance``, ``near_chance``) for the claim's tasks.
    """
    if measurement.not_applicable:
        return (
            "not applicable",
            f"cannot be posed on this architecture: {measurement.not_applicable}",
        )
    if claim.scope == "mechanism":
        at_chance = [task for task in claim.tasks if baselines.get(task, {}).get("near_chance")]
        if at_chance:
            details = ", ".join(
                f"{task} accuracy {baselines[task]['accuracy']:.2f} "
                f"(CI low {baselines[task]['accuracy_ci_low']:.2f}, chance "
                f"{baselines[task]['chance']:.2f})"
                for task in at_chance
            )
            return (
                "inconclusive: model at chance",
                f"mechanism claim on a task the model does at chance: {details}",
            )
    if measurement.missing:
        return "not reproduced", f"nothing to measure: {measurement.missing}"
    if not _finite(measurement.value, measurement.ci_low, measurement.ci_high):
        return "inconclusive", "no estimate with a confidence interval could be computed"
    if claim.kind == "direction":
        return _judge_direction(claim, measurement)
    return _judge_value(claim, measurement)


def read_baselines(paths: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """The baseline rule's JSON summaries, ``{task: summary}``, as :func:`judge` takes them."""
    summaries = (json.loads(Path(path).read_text()) for path in paths)
    return {summary["task"]: summary for summary in summaries}


def claims_table(
    paper: str,
    model: str,
    claims: Mapping[str, Claim],
    measurements: Sequence[Measurement],
    baselines: Mapping[str, Mapping[str, Any]],
) -> pd.DataFrame:
    """One row per measured claim (claims file order), judged by :func:`judge`.

    Raises:
        ValueError: a measurement of a claim the claims file does not list.
    """
    by_id = {m.claim_id: m for m in measurements}
    unknown = set(by_id) - set(claims)
    if unknown:
        raise ValueError(
            f"measurements of claims not in the {paper} claims file: {sorted(unknown)}"
        )
    rows = []
    for claim_id, claim in claims.items():
        if claim_id not in by_id:
            continue
        m = by_id[claim_id]
        verdict, rule = judge(claim, m, baselines)
        task = m.baseline_task or (claim.tasks[-1] if claim.tasks else "")
        baseline = baselines.get(task, {})
        rows.append(
            {
                "paper": paper,
                "model": model,
                "claim_id": claim.id,
                "claim": claim.text,
                "kind": claim.kind,
                "scope": claim.scope,
                "paper_model": claim.paper_model,
                "paper_value": claim.paper_value,
                "source": claim.source,
                "our_value": m.value,
                "ci_low": m.ci_low,
                "ci_high": m.ci_high,
                "n": m.n,
                "verdict": verdict,
                "rule": rule,
                "baseline_task": task,
                "baseline_accuracy": baseline.get("accuracy", math.nan),
                "baseline_chance": baseline.get("chance", math.nan),
                "note": m.note,
            }
        )
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


#: Background colour of each verdict in the HTML tables.
VERDICT_COLOURS = {
    "reproduced": "#d4edda",
    "partly": "#fff3cd",
    "not reproduced": "#f8d7da",
    "inconclusive": "#dde7f3",
    "inconclusive: model at chance": "#dde7f3",
    "not applicable": "#e2e3e5",
}

POLICY_HTML = (
    "<p><b>How verdicts are decided</b> (one policy for every paper and model). "
    "<i>Direction</i> claims: reproduced when the 95% CI of our difference lies on the "
    "paper's side of zero, not reproduced on the other side, inconclusive when it "
    "contains zero. <i>Value</i> claims: reproduced when our whole 95% CI lies within the "
    "paper's value &plusmn; the stated tolerance; partly when it lies outside but the "
    "stated ordering holds; not reproduced when neither; inconclusive when the CI "
    "straddles the band's edge. A mechanism claim on a task whose baseline comes within "
    "5 points of chance is <i>inconclusive: model at chance</i>. Not applicable only when "
    "the claim cannot be posed on the architecture.</p>"
)


def format_number(value: Any) -> str:
    """A table cell's number: three significant digits, empty when missing or not finite
    (the one format of every claims table: CSV values keep full precision)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return f"{value:.3g}" if math.isfinite(value) else ""


def verdict_summary(rows: pd.DataFrame) -> str:
    """One line for a group of claims: how many reproduced, then the rest by verdict
    ("3 of 4 claims reproduced, 1 inconclusive: model at chance")."""
    counts = rows["verdict"].value_counts()
    reproduced = int(counts.get("reproduced", 0))
    others = [f"{count} {verdict}" for verdict, count in counts.items() if verdict != "reproduced"]
    return ", ".join([f"{reproduced} of {len(rows)} claims reproduced", *others])


def claims_html(table: pd.DataFrame) -> str:
    """An HTML page: the policy, then one table per paper with the paper's model and
    value beside ours [CI], the verdict (coloured) and the rule that decided."""
    number = format_number
    sections = []
    for paper, rows in table.groupby("paper", sort=False):
        summary = verdict_summary(rows)
        body = []
        for row in rows.itertuples(index=False):
            ci = f" [{number(row.ci_low)}, {number(row.ci_high)}]" if number(row.ci_low) else ""
            colour = VERDICT_COLOURS.get(row.verdict, "white")
            baseline = (
                f"{html.escape(str(row.baseline_task))}: {number(row.baseline_accuracy)} "
                f"(chance {number(row.baseline_chance)})"
                if number(row.baseline_accuracy)
                else ""
            )
            body.append(
                "<tr>"
                f"<td>{html.escape(str(row.claim))}</td>"
                f"<td>{html.escape(str(row.paper_model))}: {number(row.paper_value)}"
                f"<br><small>{html.escape(str(row.source))}</small></td>"
                f"<td>{html.escape(str(row.model))}: {number(row.our_value)}{ci}</td>"
                f"<td style='background:{colour}'>{html.escape(str(row.verdict))}</td>"
                f"<td>{html.escape(str(row.rule))}</td>"
                f"<td>{baseline}</td>"
                f"<td>{html.escape(str(row.note))}</td>"
                "</tr>"
            )
        sections.append(
            f"<h2>{html.escape(str(paper))}</h2><p>{html.escape(summary)}</p>"
            "<table border='1' cellspacing='0' cellpadding='4'><tr><th>claim</th>"
            "<th>paper's model: value</th><th>our model: value [95% CI]</th><th>verdict</th>"
            "<th>rule that decided</th><th>baseline accuracy</th><th>note</th></tr>"
            + "".join(body)
            + "</table>"
        )
    return (
        "<html><head><meta charset='utf-8'><title>Claims: paper vs ours</title></head><body>"
        "<h1>Claims: the papers' numbers beside ours</h1>"
        + POLICY_HTML
        + "".join(sections)
        + "</body></html>\n"
    )
