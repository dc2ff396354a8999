"""Notebook rendering (circuit_repro.pipeline.notebooks): figures written through
temporary paths, a failed notebook kept under logs/ with a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

from circuit_repro.pipeline.notebooks import render_notebook
from circuit_repro.pipeline.rule_context import rule_context


def notebook_job(tmp_path: Path, body: str) -> SimpleNamespace:
    """A notebook rule's stand-in: a parameters cell with a figure path and ``body``."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    parameters = nbformat.v4.new_code_cell('figures = {"curve": ["curve.txt"]}\nlabel = "x"')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(body)]
    source = tmp_path / "toy.ipynb"
    nbformat.write(notebook, source)
    results = tmp_path / "results"
    results.mkdir()
    figure = str(results / "curve.txt")
    return SimpleNamespace(
        rule="toy_notebook",
        log=[str(tmp_path / "logs" / "toy_notebook.log")],
        output={"notebook": str(results / "toy.ipynb"), "figure": figure},
        input=SimpleNamespace(notebook=str(source)),
        params=SimpleNamespace(parameters={"figures": {"curve": [figure]}, "label": "y"}),
        wildcards={},
        resources=SimpleNamespace(attempt=1),
    )


def test_figures_are_written_through_temporaries_and_land_on_success(tmp_path):
    body = (
        "import pathlib\n"
        "path = figures['curve'][0]\n"
        "assert '.partial' in path, path  # the notebook sees the temporary path\n"
        "pathlib.Path(path).write_text(label)\n"
    )
    stand_in = notebook_job(tmp_path, body)
    with rule_context(stand_in) as ctx:
        render_notebook(ctx)
    figure = Path(stand_in.output["figure"])
    assert figure.read_text() == "y"
    assert Path(str(figure) + ".provenance.json").exists()
    executed = json.loads(Path(stand_in.output["notebook"]).read_text())
    injected = [
        c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
    ]
    assert str(figure) in "".join(injected[0]["source"])  # final paths shown to readers
    assert not list((tmp_path / "results").glob(".*partial*"))


def test_a_failing_notebook_is_kept_under_logs_with_one_line(tmp_path, capsys):
    stand_in = notebook_job(tmp_path, "raise ValueError('no such column')")
    with pytest.raises(SystemExit), rule_context(stand_in) as ctx:
        render_notebook(ctx)
    failed = tmp_path / "logs" / "toy_notebook.failed.ipynb"
    assert failed.exists()
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: notebook") and "ValueError: no such column" in message
    assert str(failed) in message
    assert not Path(stand_in.output["figure"]).exists()
    assert not list((tmp_path / "results").glob(".*partial*"))
