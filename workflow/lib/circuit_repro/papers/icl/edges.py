"""The attention edges of each step of the ICL circuit, from a prompt's role positions.

Cho et al. (2024, Tables 1-2) knock out, in a range of layers, every edge of one kind
(named by the direction information flows, ``a -> b`` = position ``b`` reads ``a``):

- ``xi_si``: each demonstration's text -> its forerunner: the forerunner ``s_i`` reads
  none of the tokens since the previous label (the text and the ``sentence:`` /
  ``sentiment`` layout around it);
- ``xq_sq``: the query's text -> the query's forerunner ``s_q``, likewise;
- ``si_yi``: each forerunner -> its label (the label token ``y_i`` no longer reads
  ``s_i``);
- ``yi_sq``: every demonstration label -> the query's forerunner;
- ``si_si``: each forerunner -> every later forerunner, the query's included.

Two choices differ from the authors' masks (docs/papers.md): position 0 is never a
knocked-out key (the first token is every head's attention sink, so removing it changes
every row's normalisation, not the step's information flow; the authors include it in
the first demonstration's text), and a token keeps its edge to itself (the authors'
``xq_sq`` and ``si_si`` masks also cut the forerunner's self-edge).
"""

from __future__ import annotations

from collections.abc import Mapping

from circuit_repro.engine.knockout import Edges

#: Keys before this position are never knocked out (position 0: the attention sink).
FIRST_KEY = 1


def demo_count(roles: Mapping[str, int]) -> int:
    """Number of demonstrations in a prompt, from its roles."""
    return sum(1 for role in roles if role.endswith("_LABEL") and role.startswith("DEMO_"))


def step_edges(roles: Mapping[str, int]) -> dict[str, Edges]:
    """``{step: edges}`` of one prompt (see the module docstring); ``roles`` are the
    record's token positions (``DEMO_{i}_FORERUNNER``, ``DEMO_{i}_LABEL``,
    ``QUERY_FORERUNNER``)."""
    k = demo_count(roles)
    forerunners = [roles[f"DEMO_{i}_FORERUNNER"] for i in range(k)]
    labels = [roles[f"DEMO_{i}_LABEL"] for i in range(k)]
    query = roles["QUERY_FORERUNNER"]
    starts = [FIRST_KEY, *(label + 1 for label in labels)]  # first token after each label
    all_forerunners = [*forerunners, query]
    return {
        "xi_si": [
            (s, key)
            for s, start in zip(forerunners, starts[:-1], strict=True)
            for key in range(start, s)
        ],
        "xq_sq": [(query, key) for key in range(starts[-1], query)],
        "si_yi": [(y, s) for s, y in zip(forerunners, labels, strict=True)],
        "yi_sq": [(query, y) for y in labels],
        "si_si": [
            (later, earlier)
            for j, later in enumerate(all_forerunners)
            for earlier in all_forerunners[:j]
        ],
    }


def layer_ranges(n_layers: int, n_ranges: int) -> list[range]:
    """``n_ranges`` consecutive ranges of layers covering the model, split at
    ``int(i / n_ranges * n_layers)`` as the authors split depth (quarters by default)."""
    bounds = [int(i * n_layers / n_ranges) for i in range(n_ranges + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def range_label(layers: range, n_layers: int) -> str:
    """``"0-25%"``: the range as a share of depth, as the paper's table columns."""
    return f"{round(100 * layers.start / n_layers)}-{round(100 * layers.stop / n_layers)}%"
