"""The reproduction report, ``results/report.html``: claims first, then every figure
with its caption and provenance.

One self-contained HTML file (images embedded), in this order:

1. a line per paper and model counting its verdicts ("3 of 4 claims reproduced on
   smollm2-135m, 1 inconclusive: model at chance");
2. every claim, one row each: the paper's model and value beside ours with its CI, the
   verdict coloured, and the note (hover for all of it);
3. the figures grouped by paper and model, each with its caption (the same files as
   ``snakemake --report`` uses, ``workflow/report/<paper>_<figure>.rst``), the model's
   weights hash, the paper's config slice, the seed, the git commit and package versions
   of the job that drew it (its provenance sidecar), and links to the rule file, the
   scripts and the notebook that made it.

Nothing here names a paper: the figures come from the paper registry
(:data:`circuit_repro.papers.PAPERS`), so a new paper's figures join the report as they
join the DAG.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_repro.papers import PAPERS
from circuit_repro.papers.claims import VERDICT_COLOURS, format_number, verdict_summary
from circuit_repro.pipeline.config import enabled_papers
from circuit_repro.provenance import prepared_weights_sha256, sidecar_path

CAPTIONS = Path("workflow/report")
#: Packages whose versions a figure's provenance shows (the sidecar has them all).
SHOWN_PACKAGES = ("torch", "transformers", "transformer-lens", "matplotlib", "seaborn")


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report and where it came from."""

    section: str  # the paper's name, or "baselines"
    unit: str  # the model (or checkpoint series) it shows; "" for all models
    name: str
    png: str
    caption: str  # the caption file (reStructuredText, may use {{ snakemake.config }})
    rule_file: str
    scripts: str
    notebook: str


def _baseline_figures(config: Mapping[str, Any]) -> list[ReportFigure]:
    names = ["task_baselines"]
    if config.get("tasks", {}).get("ioi", {}).get("enabled", True):
        names.insert(0, "ioi_baseline")
    return [
        ReportFigure(
            section="baselines",
            unit="",
            name=name,
            png=f"results/figures/{name}/{name}.png",
            caption=str(CAPTIONS / f"{name}.rst"),
            rule_file="workflow/rules/report.smk",
            scripts="workflow/scripts/render_notebook.py",
            notebook=f"notebooks/{name}.ipynb",
        )
        for name in names
    ]


def report_figures(config: Mapping[str, Any]) -> list[ReportFigure]:
    """Every figure the configured run draws: the task baselines, then each enabled
    paper's figures per result unit (in the registry's order)."""
    figures = _baseline_figures(config)
    for name in enabled_papers(config):
        paper = PAPERS[name]
        for unit in paper.result_units(config):
            figures.extend(
                ReportFigure(
                    section=name,
                    unit=unit,
                    name=figure,
                    png=f"results/figures/{name}/{unit}/{figure}.png",
                    caption=str(CAPTIONS / f"{name}_{figure}.rst"),
                    rule_file=paper.rules_file,
                    scripts=f"workflow/scripts/{name}/",
                    notebook=paper.notebook,
                )
                for figure in paper.figures
            )
    return figures


def figure_records(config: Mapping[str, Any]) -> list[dict[str, str]]:
    """:func:`report_figures` as plain dicts (a rule's params)."""
    return [asdict(figure) for figure in report_figures(config)]


# --- the claims -------------------------------------------------------------------------


def summary_lines(claims: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(paper, model, summary)`` per paper and model, in the table's order."""
    return [
        (str(paper), str(model), verdict_summary(rows))
        for (paper, model), rows in claims.groupby(["paper", "model"], sort=False)
    ]


def _claim_row(row: Mapping[str, Any]) -> str:
    ci = ""
    if format_number(row.get("ci_low")) and format_number(row.get("ci_high")):
        ci = f" <span class='ci'>[{format_number(row['ci_low'])}, {format_number(row['ci_high'])}]</span>"
    verdict = str(row["verdict"])
    colour = VERDICT_COLOURS.get(verdict, "#ffffff")
    note = str(row.get("note") or "")
    if note == "nan":
        note = ""
    paper_value = format_number(row.get("paper_value")) or "direction"
    return (
        "<tr>"
        f"<td>{html.escape(str(row['paper']))}</td>"
        f"<td class='model'>{html.escape(str(row['model']))}</td>"
        f"<td class='claim'>{html.escape(str(row['claim']))}</td>"
        f"<td class='theirs'>{html.escape(str(row['paper_model']))}: {paper_value}</td>"
        f"<td class='ours'>{format_number(row.get('our_value'))}{ci}</td>"
        f"<td class='verdict' style='background:{colour}'>{html.escape(verdict)}</td>"
        f"<td><div class='note' title='{html.escape(note, quote=True)}'>"
        f"{html.escape(note)}</div></td>"
        "</tr>"
    )


def claims_section(claims: pd.DataFrame) -> str:
    """The per-paper summary lines and the table of every claim."""
    if claims.empty:
        return "<section id='claims'><h2>Claims</h2><p>No paper is enabled.</p></section>"
    lines = "".join(
        f"<li><a href='#paper-{html.escape(paper)}'>{html.escape(paper)}</a> on "
        f"{html.escape(model)}: {html.escape(text)}</li>"
        for paper, model, text in summary_lines(claims)
    )
    rows = "".join(_claim_row(row) for row in claims.to_dict("records"))
    return (
        "<section id='claims'><h2>Claims: the papers' numbers beside ours</h2>"
        f"<ul class='summary'>{lines}</ul>"
        "<table id='claims-table'><thead><tr><th>paper</th><th>model</th><th>claim</th>"
        "<th>paper's model: value</th><th>ours [95% CI]</th><th>verdict</th><th>note</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        "<p class='policy'>Verdicts: reproduced when the interval lies on the paper's side "
        "(direction claims) or within the stated band around the paper's value (value "
        "claims); not reproduced when it lies on the other side or outside; inconclusive "
        "when it straddles the edge. A mechanism claim on a task the model does at chance "
        "is <i>inconclusive: model at chance</i>. The full policy and each claim's rule "
        "are in <code>results/claims.html</code>.</p></section>"
    )


# --- the figures ------------------------------------------------------------------------


def render_caption(path: str | Path, config: Mapping[str, Any]) -> str:
    """A caption file as HTML: its Jinja placeholders filled from the config (as
    ``snakemake --report`` does), then reStructuredText to HTML."""
    import jinja2
    from docutils.core import publish_parts

    source = Path(path).read_text(encoding="utf-8")
    text = jinja2.Template(source).render(snakemake={"config": config})
    parts = publish_parts(
        text,
        writer="html",
        settings_overrides={"report_level": 5, "halt_level": 5, "file_insertion_enabled": False},
    )
    return parts["body"]


def _sidecar(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def model_hash(model: str, models_folder: str | Path = "resources/models") -> str:
    """The first 12 hex digits of a prepared model's weights' sha256 ("" if unknown)."""
    hashes = prepared_weights_sha256(model, models_folder)
    return ", ".join(f"{name} {digest[:12]}" for name, digest in sorted(hashes.items()))


def _image(png: str | Path) -> str:
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _relative(path: str) -> str:
    """A repository path as a link from ``results/report.html``."""
    return "../" + path


def figure_html(figure: ReportFigure, config: Mapping[str, Any]) -> str:
    """One figure: the image, its caption, then where it came from."""
    record = _sidecar(figure.png)
    packages = record.get("packages", {})
    versions = ", ".join(f"{p} {packages[p]}" for p in SHOWN_PACKAGES if p in packages)
    weights = model_hash(figure.unit) if figure.unit else ""
    provenance = [
        f"model <b>{html.escape(figure.unit)}</b>"
        + (f" (weights sha256 {html.escape(weights)})" if weights else "")
        if figure.unit
        else "models " + html.escape(", ".join(config.get("models", []))),
        f"seed {config.get('seed', '')}",
        f"git {html.escape(str(record.get('git_commit', 'unknown')))}",
        f"made {html.escape(str(record.get('created', 'unknown')))}",
    ]
    if versions:
        provenance.append(html.escape(versions))
    links = " · ".join(
        f"<a href='{html.escape(_relative(path))}'>{html.escape(label)}</a>"
        for label, path in (
            (f"rule {record.get('rule', '')}".strip(), figure.rule_file),
            ("scripts", figure.scripts),
            ("notebook", figure.notebook),
            ("PDF", figure.png.removesuffix(".png") + ".pdf"),
            ("provenance", str(sidecar_path(figure.png))),
        )
    )
    return (
        f"<figure id='{html.escape(figure.section)}-{html.escape(figure.unit)}-"
        f"{html.escape(figure.name)}'>"
        f"<img src='{_image(figure.png)}' alt='{html.escape(figure.name)}'>"
        f"<figcaption><div class='caption'>{render_caption(figure.caption, config)}</div>"
        f"<p class='provenance'>{'; '.join(provenance)}</p>"
        f"<p class='links'>{links}</p></figcaption></figure>"
    )


def _section_title(section: str) -> str:
    if section == "baselines":
        return "Task baselines"
    paper = PAPERS[section]
    return f"{paper.title} ({paper.citation})"


def figures_section(figures: Sequence[ReportFigure], config: Mapping[str, Any]) -> str:
    """The figures grouped by paper, then by model, each paper with its config slice."""
    parts = []
    for section in dict.fromkeys(f.section for f in figures):
        members = [f for f in figures if f.section == section]
        settings = config.get(section) if section != "baselines" else config.get("baseline")
        config_slice = (
            "<details><summary>config slice</summary><pre>"
            + html.escape(json.dumps(settings, indent=1, sort_keys=True, default=str))
            + "</pre></details>"
            if settings
            else ""
        )
        parts.append(
            f"<section id='paper-{html.escape(section)}'>"
            f"<h2>{html.escape(_section_title(section))}</h2>{config_slice}"
        )
        for unit in dict.fromkeys(f.unit for f in members):
            if unit:
                parts.append(f"<h3>{html.escape(unit)}</h3>")
            parts.extend(figure_html(f, config) for f in members if f.unit == unit)
        parts.append("</section>")
    return "".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       color: #222; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
.meta { color: #555; margin: 0 0 1em; }
.summary { margin: .3em 0 .8em; padding-left: 1.2em; }
table { border-collapse: collapse; font-size: .85em; width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.model, td.theirs, span.ci { white-space: nowrap; }
td.claim { min-width: 18em; }
td.verdict { font-weight: 600; }
div.note { max-width: 14em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
           color: #555; }
.policy { font-size: .8em; color: #555; }
figure { margin: 1.5em 0; border-top: 1px solid #ddd; padding-top: .8em; }
figure img { max-width: 100%; }
figcaption { font-size: .9em; }
.provenance, .links { font-size: .8em; color: #555; margin: .2em 0; }
"""


#: Once the page has loaded, it records on <html> how many of its images decoded
#: (``data-images-loaded="12/12"``): a browser's view of the report can be checked.
IMAGE_CHECK = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((image) => image.complete && image.naturalWidth > 0);
  document.documentElement.dataset.imagesLoaded = loaded.length + "/" + images.length;
});
"""


def write_report(
    claims: pd.DataFrame,
    figures: Iterable[ReportFigure | Mapping[str, str]],
    config: Mapping[str, Any],
    output: str | Path,
    header: Mapping[str, Any] | None = None,
) -> None:
    """Write the report (see the module docstring) to ``output``.

    Args:
        claims: The merged claims table (``results/claims.csv``).
        figures: The figures to show (:func:`report_figures` or its dicts); each PNG,
            caption file and provenance sidecar is read.
        config: The run's config (captions' placeholders, config slices, seed).
        output: The HTML file to write.
        header: Extra ``name: value`` facts for the line under the title (git commit...).
    """
    figures = [f if isinstance(f, ReportFigure) else ReportFigure(**f) for f in figures]
    facts = {
        "models": ", ".join(config.get("models", [])),
        "seed": config.get("seed", ""),
        "device": config.get("compute", {}).get("device", ""),
        "dtype": config.get("compute", {}).get("dtype", ""),
        **(header or {}),
    }
    meta = " · ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in facts.items())
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<title>circuit-repro: reproduction report</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>circuit-repro: reproduction report</h1>"
        f"<p class='meta'>{meta}</p>"
        f"{claims_section(claims)}"
        f"{figures_section(figures, config)}"
        f"<script>{IMAGE_CHECK}</script></body></html>\n"
    )
    Path(output).write_text(page, encoding="utf-8")


def claims_markdown(claims: pd.DataFrame) -> str:
    """The claims summary as Markdown: one row per paper and model with its verdict
    counts (the README's results section is this table for the default run)."""
    verdicts = [v for v in VERDICT_COLOURS if v in set(claims["verdict"])]
    header = ["paper", "model", "claims", *verdicts]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for (paper, model), rows in claims.groupby(["paper", "model"], sort=False):
        counts = rows["verdict"].value_counts()
        cells = [str(paper), str(model), str(len(rows))]
        cells += [str(int(counts.get(verdict, 0))) for verdict in verdicts]
        lines.append("| " + " | ".join(cells) + " |")
    counts = claims["verdict"].value_counts()
    total = ["**all**", "", f"**{len(claims)}**"]
    total += [f"**{int(counts.get(verdict, 0))}**" for verdict in verdicts]
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m circuit_repro.pipeline.report [claims.csv]``: print the claims
    summary of a run as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("claims", nargs="?", default="results/claims.csv")
    args = parser.parse_args(argv)
    path = Path(args.claims)
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist; run `make reproduce` first")
    print(claims_markdown(pd.read_csv(path)), end="")


if __name__ == "__main__":
    main()
