"""P1. Multiple-choice "correct letter" heads (Lieberum, Rahtz, Kramár, Nanda, Irving,
Shah and Mikulik 2023, "Does Circuit Analysis Interpretability Scale? Evidence from
Multiple Choice Capabilities in Chinchilla", arXiv 2307.09458).

- :mod:`.analysis`: direct logit attribution to the correct letter, attention of every
  head to the option labels, low-rank compression of a head's queries and keys.

This ``__init__`` is torch-free (the workflow imports it to build the DAG).
"""
