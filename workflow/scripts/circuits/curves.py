"""Rule circuits_curves: every method's faithfulness curve, CPR and CMD with bootstrap
CIs over prompts, per task, beside the time each method took to score."""

import pandas as pd

from circuit_repro.papers.circuits import CircuitsSettings
from circuit_repro.papers.circuits.evaluation import method_areas
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    settings = settings_from_config(CircuitsSettings, ctx.params.circuits, seed=ctx.params.seed)
    all_curves, all_areas = [], []
    for task, metrics_path, methods_path in zip(
        ctx.params.tasks, ctx.input.prompt_metrics, ctx.input.methods, strict=True
    ):
        curves, areas = method_areas(
            pd.read_csv(metrics_path), settings.bootstrap_samples, settings.confidence,
            settings.seed,
        )  # fmt: skip
        methods = pd.read_csv(methods_path).drop(columns="task")
        areas = areas.merge(methods, on="method")
        for table in (curves, areas):
            table.insert(0, "task", task)
            table.insert(1, "task_model", ctx.params.task_models[task])
        all_curves.append(curves)
        all_areas.append(areas)
    pd.concat(all_curves).to_csv(ctx.output.curves, index=False)
    pd.concat(all_areas).to_csv(ctx.output.areas, index=False)
