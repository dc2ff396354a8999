"""``python -m circuit_repro.bench`` (``make bench``): the patching benchmarks."""

from circuit_repro.bench.patching import main

main()
