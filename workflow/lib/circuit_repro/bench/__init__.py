"""Benchmarks (``make bench``): ratios against the naive loop and TransformerLens,
measured in the same run, with the FLOP floor of each method."""
