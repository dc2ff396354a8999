"""Render a parameterised notebook with papermill inside a rule context.

The executed notebook goes to the temporary path of the ``notebook`` output. Every
notebook parameter whose value is exactly one of the rule's other output paths (also
inside lists and dicts) is replaced by that output's temporary path, so figures appear
under their final names only once the whole notebook has run; in the executed
notebook the injected cell shows the final paths again. Outputs that no parameter
names (a notebook that builds file names from a folder parameter) are written by the
notebook under their final names (``ctx.final``). If a cell fails, the executed
notebook with the error is kept beside the rule's log as ``<log name>.failed.ipynb``
and the one-line error names it. Every notebook also gets ``figure_provenance``
(:func:`figure_provenance`), which its figures carry in their PNG and PDF metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import papermill

from circuit_repro.errors import UserFacingError
from circuit_repro.pipeline.rule_context import RuleContext
from circuit_repro.provenance import prepared_weights_sha256, provenance_record

#: Packages whose versions a figure's embedded provenance records.
FIGURE_PACKAGES = ("torch", "transformers", "transformer-lens", "matplotlib", "seaborn", "numpy")


class NotebookFailed(UserFacingError):
    """A cell of the notebook raised; the executed notebook shows where."""


def to_temporaries(value, ctx, by_path, used):
    """``value`` with every string equal to an output path replaced by its temporary path
    (the names of the outputs replaced are added to ``used``)."""
    if isinstance(value, str):
        name = by_path.get(os.path.normpath(value))
        if name is None:
            return value
        used.add(name)
        return str(ctx.output(name))
    if isinstance(value, dict):
        return {key: to_temporaries(item, ctx, by_path, used) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_temporaries(item, ctx, by_path, used) for item in value]
    return value


def figure_provenance(ctx: RuleContext, models_folder: str | Path = "resources/models") -> dict:
    """What a figure records about how it was made (the notebook's ``figure_provenance``
    parameter, written into each PNG and PDF by
    :func:`circuit_repro.provenance.figure_metadata`): the rule and its wildcards, the
    weights' sha256 of the model it shows, the paper's config slice and the seed, the
    git commit and the versions of the main packages."""
    fields = ctx.provenance_fields()
    record = provenance_record()
    config = getattr(ctx.job, "config", None) or {}
    paper = (ctx.rule or "").removesuffix("_notebook")
    model = fields.get("model")
    weights = prepared_weights_sha256(model, models_folder) if model else {}
    packages = record["packages"]
    return {
        "rule": ctx.rule,
        **{key: fields[key] for key in ("model", "series", "task") if key in fields},
        "model_sha256": weights,
        "config": config.get(paper, {}),
        "seed": config.get("seed"),
        "git_commit": record["git_commit"],
        "packages": {name: packages[name] for name in FIGURE_PACKAGES if name in packages},
    }


def render_notebook(ctx: RuleContext) -> None:
    """Execute ``ctx.input.notebook`` with ``ctx.params.parameters`` (see the module
    docstring); raises :class:`NotebookFailed` naming the kept, failed notebook."""
    by_path = {os.path.normpath(p): n for n, p in ctx.final_paths.items() if n != "notebook"}
    used = set()
    parameters = to_temporaries(dict(ctx.params.parameters), ctx, by_path, used)
    parameters.setdefault("figure_provenance", figure_provenance(ctx))
    for name in set(by_path.values()) - used:
        ctx.final(name)  # the notebook writes it itself, under its final name
    log = ctx.log_path or Path("logs/notebooks") / Path(ctx.input.notebook).name
    failed = log.with_name(log.stem + ".failed.ipynb")
    executed = ctx.output.notebook
    try:
        papermill.execute_notebook(
            ctx.input.notebook,
            executed,
            parameters=parameters,
            kernel_name="python3",
            cwd=str(Path.cwd()),
            progress_bar=False,
        )
    except papermill.PapermillExecutionError as error:
        print(error)  # the cell's traceback, into the log
        failed.parent.mkdir(parents=True, exist_ok=True)
        os.replace(executed, failed)
        raise NotebookFailed(
            f"notebook {ctx.input.notebook} failed in cell {error.exec_count}: "
            f"{error.ename}: {error.evalue}; the executed notebook is {failed}"
        ) from None
    notebook = nbformat.read(executed, as_version=4)
    for cell in notebook.cells:
        if "injected-parameters" in cell.metadata.get("tags", []):
            for final, temporary in ctx.temporaries().items():
                cell.source = cell.source.replace(str(temporary), final)
    nbformat.write(notebook, executed)
    failed.unlink(missing_ok=True)  # left by an earlier failed run
