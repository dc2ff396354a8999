"""``python -m circuit_repro.bench`` (``make bench``): where the last pipeline run's time
went (:mod:`circuit_repro.bench.jobs`), then the patching benchmarks
(:mod:`circuit_repro.bench.patching`)."""

import sys

from circuit_repro.bench import jobs
from circuit_repro.bench.patching import main
from circuit_repro.paths import REPO_ROOT

print("## Jobs of the last pipeline run (benchmarks/, logs/)\n")
jobs.main(["--output", str(REPO_ROOT / "results" / "bench" / "jobs.json")])
print("\n## Patching\n")
main(sys.argv[1:])
