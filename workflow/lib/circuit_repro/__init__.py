"""circuit_repro: reproduce circuit-analysis results on any Hugging Face causal LM."""

__version__ = "0.1.0"
