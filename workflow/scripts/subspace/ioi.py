"""Rule subspace_ioi: the IOI position feature on one model (layer scan, reader heads,
DAS in the MLP, the residual stream and the control MLP, Table 1)."""

from pathlib import Path

from safetensors.torch import save_file

from circuit_repro.models.load import load_bridge
from circuit_repro.papers.spec import settings_from_config
from circuit_repro.papers.subspace import SubspaceSettings
from circuit_repro.papers.subspace.ioi import run_ioi
from circuit_repro.pipeline.rule_context import rule_context

with rule_context(snakemake) as ctx:
    compute = ctx.params.compute
    settings = settings_from_config(SubspaceSettings, ctx.params.subspace, seed=ctx.params.seed)
    loaded = load_bridge(Path(ctx.input.model).parent, compute["device"], compute["dtype"])
    result = run_ioi(loaded, settings)
    for name in ("pairs", "scan", "readers", "table", "contrasts", "training"):
        getattr(result, name).to_csv(ctx.output[name], index=False)
    save_file(result.directions, ctx.output.directions)
