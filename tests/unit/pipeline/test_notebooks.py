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


def test_figures_carry_their_provenance_in_png_and_pdf_metadata(tmp_path, monkeypatch):
    from circuit_repro.provenance import read_figure_provenance

    models = tmp_path / "resources" / "models" / "tiny-llama"
    models.mkdir(parents=True)
    (models / "provenance.json").write_text(
        json.dumps({"safetensors_sha256": {"model.safetensors": "ab" * 32}})
    )
    monkeypatch.chdir(tmp_path)
    body = (
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "from circuit_repro.provenance import figure_metadata\n"
        "fig, axis = plt.subplots()\n"
        "axis.plot([0, 1])\n"
        "for path in figures['curve']:\n"
        "    fig.savefig(path, metadata=figure_metadata(path, figure_provenance))\n"
    )
    stand_in = notebook_job(tmp_path, body)
    results = tmp_path / "results"
    stand_in.output = {
        "notebook": str(results / "toy.ipynb"),
        "png": str(results / "curve.png"),
        "pdf": str(results / "curve.pdf"),
    }
    stand_in.params.parameters = {
        "figures": {"curve": [stand_in.output["png"], stand_in.output["pdf"]]}
    }
    stand_in.wildcards = {"model": "tiny-llama"}
    stand_in.config = {"seed": 5, "toy": {"n_prompts": 12}}
    with rule_context(stand_in) as ctx:
        render_notebook(ctx)
    for name in ("png", "pdf"):
        embedded = read_figure_provenance(stand_in.output[name])
        assert embedded["rule"] == "toy_notebook" and embedded["model"] == "tiny-llama", name
        assert embedded["model_sha256"] == {"model.safetensors": "ab" * 32}
        assert embedded["config"] == {"n_prompts": 12} and embedded["seed"] == 5
        assert embedded["git_commit"] and "torch" in embedded["packages"]
