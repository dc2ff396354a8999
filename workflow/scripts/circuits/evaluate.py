"""Rule circuits_evaluate: every method's scores on one task and the per-prompt metric
of every circuit they give; edge scores as MIB circuit files."""

from pathlib import Path

from circuit_repro.engine.circuits import Circuit, top_k_by_magnitude
from circuit_repro.engine.mib import write_mib
from circuit_repro.models.load import load_bridge
from circuit_repro.papers.circuits import CircuitsSettings
from circuit_repro.papers.circuits.evaluation import evaluate_task
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.pipeline.rule_context import rule_context
from circuit_repro.tasks.base import read_records

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(CircuitsSettings, ctx.params.circuits, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    result = evaluate_task(
        loaded, read_records(ctx.input.prompts), ctx.wildcards.task, settings,
        batch_size=compute["batch_size"],
    )  # fmt: skip
    result.prompt_metrics.to_csv(ctx.output.prompt_metrics, index=False)
    result.methods.to_csv(ctx.output.methods, index=False)
    result.node_scores["atp"].to_csv(ctx.output.nodes, index=False)
    for method in ctx.params.methods:
        scores = result.edge_scores[method]
        count = int(settings.export_percentage * len(scores))
        kept = scores.iloc[top_k_by_magnitude(scores["score"].to_numpy(), count)]
        circuit = Circuit(
            "edge",
            sorted(set(kept["upstream"]) | set(kept["downstream"])),
            list(zip(kept["upstream"], kept["downstream"], strict=True)),
            settings={"method": method, "percentage": settings.export_percentage},
        )
        write_mib(ctx.output(f"mib_{method}"), result.graph, scores, circuit)
