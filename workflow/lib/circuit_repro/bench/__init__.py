"""Benchmarks (``make bench``): ratios against the naive loop and TransformerLens,
measured in the same run, with the FLOP floor of each method."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def report_rows(rows: list[dict], keys: Sequence[str], output: Path) -> None:
    """Print ``rows`` as a Markdown table (floats to 3 significant digits) and write them
    to ``output`` as JSON."""
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        print("| " + " | ".join(cells) + " |")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=2))
