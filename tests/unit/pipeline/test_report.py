"""The reproduction report: claims first, figures with captions and provenance."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from circuit_repro.papers import PAPERS
from circuit_repro.papers.claims import claims_html, verdict_summary
from circuit_repro.pipeline.config import REPO_ROOT, enabled_papers, load_config
from circuit_repro.pipeline.report import (
    ReportFigure,
    claims_markdown,
    claims_section,
    render_caption,
    report_figures,
    write_report,
)
from circuit_repro.pipeline.report import main as report_main

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def default_config():
    return load_config(REPO_ROOT / "config" / "config.yaml")


def test_every_figure_of_every_enabled_paper_is_in_the_report(default_config):
    figures = report_figures(default_config)
    for name in enabled_papers(default_config):
        paper = PAPERS[name]
        for unit in paper.result_units(default_config):
            shown = {f.name for f in figures if f.section == name and f.unit == unit}
            assert shown == set(paper.figures), (name, unit)
    targets = {f.png for f in figures}
    assert len(targets) == len(figures)
    for figure in figures:  # captions, rules, scripts and notebooks exist
        for path in (figure.caption, figure.rule_file, figure.scripts, figure.notebook):
            assert (REPO_ROOT / path).exists(), path


def test_a_disabled_paper_has_no_figures(default_config):
    config = {**default_config, "reuse": {**default_config["reuse"], "enabled": False}}
    assert not [f for f in report_figures(config) if f.section == "reuse"]


def test_every_caption_renders_with_the_config_filled_in(default_config):
    for figure in report_figures(default_config):
        caption = render_caption(REPO_ROOT / figure.caption, default_config)
        assert "{{" not in caption and "System Message" not in caption, figure.caption
        assert len(caption) > 50


def test_verdict_summary_counts_reproduced_first():
    rows = pd.DataFrame(
        {"verdict": ["reproduced", "inconclusive: model at chance", "reproduced", "inconclusive"]}
    )
    assert verdict_summary(rows) == (
        "2 of 4 claims reproduced, 1 inconclusive: model at chance, 1 inconclusive"
    )


def _claims() -> pd.DataFrame:
    row = {
        "paper": "reuse",
        "model": "tiny-llama",
        "claim_id": "overlap",
        "claim": "IOI and Colored Objects circuits share heads",
        "kind": "value",
        "scope": "mechanism",
        "paper_model": "gpt2-medium",
        "paper_value": 0.78,
        "source": "abstract",
        "our_value": 0.41,
        "ci_low": 0.3,
        "ci_high": 0.5,
        "n": 16,
        "verdict": "not reproduced",
        "rule": "value",
        "baseline_task": "colored_objects",
        "baseline_accuracy": 0.62,
        "baseline_chance": 0.125,
        "note": "10 of 26 heads shared",
    }
    return pd.DataFrame(
        [row, {**row, "claim_id": "x", "verdict": "reproduced", "paper_value": None}]
    )


def test_the_report_and_the_claims_page_print_the_same_numbers_and_summary():
    claims = _claims().assign(our_value=0.000412345, ci_low=-0.00012, ci_high=0.00093)
    report, page = claims_section(claims), claims_html(claims)
    for text in ("0.000412", "-0.00012", "0.00093", verdict_summary(claims)):
        assert text in report and text in page, text
    assert "0.000412345" not in report + page  # three significant digits, not the CSV's


def test_the_report_opens_on_the_claims_and_embeds_each_figure_with_its_provenance(tmp_path):
    import matplotlib.pyplot as plt

    png = tmp_path / "results/figures/reuse/tiny-llama/overlap.png"
    png.parent.mkdir(parents=True)
    fig, axis = plt.subplots(figsize=(2, 2))
    axis.plot([0, 1], [1, 0])
    fig.savefig(png)
    plt.close(fig)
    sidecar = png.with_name(png.name + ".provenance.json")
    sidecar.write_text(
        json.dumps(
            {
                "rule": "reuse_notebook",
                "git_commit": "abc1234",
                "created": "2026-11-30T12:00:00+00:00",
                "packages": {"torch": "2.13.0", "numpy": "2.0"},
            }
        )
    )
    caption = tmp_path / "caption.rst"
    caption.write_text(
        'Overlap on {{ snakemake.config["reuse"]["n_prompts"] }} prompts, *per task*.'
    )
    figure = ReportFigure(
        section="reuse",
        unit="tiny-llama",
        name="overlap",
        png=str(png),
        caption=str(caption),
        rule_file="workflow/rules/papers/reuse.smk",
        scripts="workflow/scripts/reuse/",
        notebook="notebooks/reuse.ipynb",
    )
    config = {"models": ["tiny-llama"], "seed": 3, "reuse": {"n_prompts": 40}}
    output = tmp_path / "report.html"
    write_report(_claims(), [figure], config, output, header={"git": "abc1234"})
    page = output.read_text()

    claims_at, figure_at = page.index("id='claims-table'"), page.index("<figure")
    assert claims_at < figure_at  # the claims come first
    assert "reuse</a> on tiny-llama: 1 of 2 claims reproduced, 1 not reproduced" in page
    assert "#f8d7da" in page and "#d4edda" in page  # verdicts coloured
    assert "0.41 <span class='ci'>[0.3, 0.5]</span>" in page and "gpt2-medium: 0.78" in page
    assert "gpt2-medium: direction" in page  # a claim without a paper value
    encoded = base64.b64encode(png.read_bytes()).decode()
    assert f"data:image/png;base64,{encoded}" in page
    assert "Overlap on 40 prompts, <em>per task</em>." in page
    assert "seed 3" in page and "git abc1234" in page and "torch 2.13.0" in page
    assert "rule reuse_notebook" in page and "href='../notebooks/reuse.ipynb'" in page
    assert "&quot;n_prompts&quot;: 40" in page  # the paper's config slice


def test_a_report_without_papers_says_so(tmp_path):
    output = tmp_path / "report.html"
    write_report(pd.DataFrame(), [], {"models": ["m"]}, output)
    assert "No paper is enabled." in output.read_text()
    assert Path(output).stat().st_size > 0


def test_the_markdown_summary_counts_each_verdict_per_paper_and_model(tmp_path, capsys):
    claims = pd.concat(
        [_claims(), _claims().assign(model="tiny-gpt2", verdict="inconclusive: model at chance")]
    )
    table = claims_markdown(claims).splitlines()
    assert table[0] == (
        "| paper | model | claims | reproduced | not reproduced | inconclusive: model at chance |"
    )
    assert table[2] == "| reuse | tiny-llama | 2 | 1 | 1 | 0 |"
    assert table[3] == "| reuse | tiny-gpt2 | 2 | 0 | 0 | 2 |"
    assert table[4] == "| **all** |  | **4** | **1** | **1** | **2** |"
    claims.to_csv(tmp_path / "claims.csv", index=False)
    report_main([str(tmp_path / "claims.csv")])
    assert capsys.readouterr().out.splitlines() == table
    with pytest.raises(SystemExit, match="run `make reproduce` first"):
        report_main([str(tmp_path / "missing.csv")])
