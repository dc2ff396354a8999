"""``python -m circuit_repro.bench`` (``make bench``): where the last pipeline run's time
went (:mod:`circuit_repro.bench.jobs`), then the patching benchmarks
(:mod:`circuit_repro.bench.patching`), then DAS against TransformerLens
(:mod:`circuit_repro.bench.das`), then attention-edge knockouts against a plain loop and
TransformerLens (:mod:`circuit_repro.bench.knockout`), then transcoder activation
collection and training (:mod:`circuit_repro.bench.transcoders`), then the batch-size
dependence of logits (:mod:`circuit_repro.bench.batch_size`), then circuit discovery's
time beside its circuits' CPR and CMD (:mod:`circuit_repro.bench.circuits`)."""

import sys

from circuit_repro.bench import batch_size, circuits, das, jobs, knockout, transcoders
from circuit_repro.bench.patching import main
from circuit_repro.paths import REPO_ROOT

print("## Jobs of the last pipeline run (benchmarks/, logs/)\n")
jobs.main(["--output", str(REPO_ROOT / "results" / "bench" / "jobs.json")])
print("\n## Patching\n")
main(sys.argv[1:])
print("\n## DAS (subspace paper) against TransformerLens's fit_das\n")
das.main([])
print("\n## Attention-edge knockouts (ICL paper) against a plain loop and TransformerLens\n")
knockout.main([])
print("\n## Transcoders: activation collection (vs a full pass and TransformerLens), training\n")
transcoders.main([])
print("\n## Batch-size dependence of logits (CPU, float32)\n")
batch_size.main([])
print("\n## Circuit discovery on IOI: each method's time beside its circuits' CPR and CMD\n")
circuits.main([])
