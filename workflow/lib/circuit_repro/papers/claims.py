"""Claims tables: each paper's headline numbers beside ours, with a verdict.

Every paper's rules write ``results/<paper>/<model>/claims.csv`` with the columns of
:data:`CLAIM_COLUMNS`; rule ``claims_table`` merges them into ``results/claims.csv``
and the page at the top of the report. A verdict is one of :data:`VERDICTS`; the
``note`` column says which rule produced it, so a reader can disagree with it.
"""

from __future__ import annotations

import html

import pandas as pd

CLAIM_COLUMNS = [
    "paper",
    "model",
    "claim_id",
    "claim",
    "paper_value",
    "our_value",
    "ci_low",
    "ci_high",
    "verdict",
    "baseline_task",
    "baseline_accuracy",
    "note",
]
"""Columns of every paper's claims.csv (one row per headline claim and model)."""

VERDICTS = ("reproduced", "partly", "not reproduced", "not applicable")


def claim_row(**fields) -> dict:
    """One claims.csv row; columns not given are empty.

    Raises:
        ValueError: an unknown column, or a verdict not in :data:`VERDICTS`.
    """
    unknown = set(fields) - set(CLAIM_COLUMNS)
    if unknown:
        raise ValueError(f"unknown claim columns {sorted(unknown)}")
    if fields.get("verdict") not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {fields.get('verdict')!r}")
    return {column: fields.get(column, "") for column in CLAIM_COLUMNS}


_VERDICT_COLOURS = {
    "reproduced": "#d4edda",
    "partly": "#fff3cd",
    "not reproduced": "#f8d7da",
    "not applicable": "#e2e3e5",
}


def claims_html(table: pd.DataFrame) -> str:
    """An HTML page with one table per paper: claim, paper's value, ours [CI], verdict."""

    def number(value) -> str:
        try:
            return f"{float(value):.3f}"
        except (TypeError, ValueError):
            return ""

    sections = []
    for paper, rows in table.groupby("paper", sort=False):
        body = []
        for row in rows.itertuples(index=False):
            ci = f"[{number(row.ci_low)}, {number(row.ci_high)}]" if number(row.ci_low) else ""
            colour = _VERDICT_COLOURS.get(row.verdict, "white")
            body.append(
                "<tr>"
                f"<td>{html.escape(str(row.model))}</td>"
                f"<td>{html.escape(str(row.claim))}</td>"
                f"<td>{number(row.paper_value)}</td>"
                f"<td>{number(row.our_value)} {ci}</td>"
                f"<td style='background:{colour}'>{html.escape(str(row.verdict))}</td>"
                f"<td>{html.escape(str(row.baseline_task))}: {number(row.baseline_accuracy)}</td>"
                f"<td>{html.escape(str(row.note))}</td>"
                "</tr>"
            )
        sections.append(
            f"<h2>{html.escape(str(paper))}</h2><table border='1' cellspacing='0' "
            "cellpadding='4'><tr><th>model</th><th>claim</th><th>paper</th>"
            "<th>ours [95% CI]</th><th>verdict</th><th>baseline accuracy</th><th>how judged</th>"
            "</tr>" + "".join(body) + "</table>"
        )
    return (
        "<html><head><meta charset='utf-8'><title>Claims: paper vs ours</title></head><body>"
        "<h1>Claims: the papers' numbers beside ours</h1>" + "".join(sections) + "</body></html>\n"
    )
