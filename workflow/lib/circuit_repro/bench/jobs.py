"""Where a pipeline run's time went: ``python -m circuit_repro.bench.jobs``.

Reads every rule's Snakemake benchmark file (``benchmarks/**/*.tsv``: the job's wall
time as Snakemake measured it, process start included) and the ``timing: {...}`` line
that the rule context writes at the end of each job's log (``logs/**/*.log``, see
:mod:`circuit_repro.timing`), and reports, per rule and in total, the time spent
outside model computation: starting the process and importing the libraries, loading
the model and booting the bridge, and writing the results. Jobs without a timing line
(a notebook rendered by papermill, a run made before timing lines existed) count as
wholly outside model computation when they load no model, and are listed apart.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from circuit_repro.paths import REPO_ROOT
from circuit_repro.provenance import write_json
from circuit_repro.timing import parse_timing_line

OUTSIDE_PHASES = ("startup", "model_load", "write")


@dataclass
class JobTime:
    """One job: its benchmark file, wall seconds and, when its log has one, its phases."""

    benchmark: str
    rule: str
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0

    @property
    def outside(self) -> float:
        """Seconds outside model computation: the job's wall time minus its computation
        (all of it when the log has no timing line)."""
        if not self.phases:
            return self.seconds
        return max(0.0, self.seconds - self.phases.get("compute", 0.0))


def benchmark_seconds(path: Path, column: str = "s") -> float:
    """A column of the last row of a Snakemake benchmark file: the wall time (``s``) by
    default, or ``cpu_time`` (CPU seconds of the job's processes, every thread)."""
    lines = path.read_text().strip().splitlines()
    header, last = lines[0].split("\t"), lines[-1].split("\t")
    try:
        return float(last[header.index(column)])
    except (ValueError, IndexError):  # an old file without the column, or "NA"
        return 0.0


def paper_unit(benchmark: str) -> tuple[str, str] | None:
    """``(paper, unit)`` of a job's benchmark file (``<paper>/<unit>/<job>.tsv``, a
    checkpoint ``<series>@<step>`` counted with its series, or the notebook
    ``notebooks/<paper>_<unit>.tsv``); None for jobs of no paper (models, tasks)."""
    from circuit_repro.papers import PAPERS

    parts = Path(benchmark).parts
    if parts[0] in PAPERS and len(parts) >= 3:
        return parts[0], parts[1].split("@")[0]
    if parts[0] == "notebooks" and len(parts) == 2:
        for paper in PAPERS:
            if parts[1].startswith(f"{paper}_"):
                return paper, Path(parts[1]).stem[len(paper) + 1 :].split("@")[0]
    return None


def read_log(path: Path) -> tuple[str | None, dict[str, float]]:
    """The rule named on a log's first line (``rule <name>, attempt <n>``) and the phases
    of its last ``timing:`` line (None and empty when absent)."""
    if not path.exists():
        return None, {}
    rule, phases = None, {}
    for line in path.read_text(errors="replace").splitlines():
        if rule is None and line.startswith("rule ") and ", attempt " in line:
            rule = line[len("rule ") :].split(",")[0]
        parsed = parse_timing_line(line)
        if parsed is not None:
            phases = parsed
    return rule, phases


def collect(benchmarks: Path, logs: Path) -> list[JobTime]:
    """Every job of the run: benchmark files matched with their logs by path (a job
    whose log names no rule, such as a rendered notebook, is named by its folder)."""
    jobs = []
    for path in sorted(benchmarks.rglob("*.tsv")):
        relative = path.relative_to(benchmarks)
        rule, phases = read_log(logs / relative.with_suffix(".log"))
        jobs.append(
            JobTime(
                benchmark=str(relative),
                rule=rule or relative.parts[0],
                seconds=benchmark_seconds(path),
                phases=phases,
                cpu_seconds=benchmark_seconds(path, "cpu_time"),
            )
        )
    return jobs


def summarize(jobs: list[JobTime]) -> dict:
    """Totals per rule kind and over the run; shares of time outside model computation."""
    by_rule: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for job in jobs:
        row = by_rule[job.rule]
        row["jobs"] += 1
        row["seconds"] += job.seconds
        row["outside"] += job.outside
        for name in OUTSIDE_PHASES:
            row[name] += job.phases.get(name, 0.0)
        row["untimed"] += 0.0 if job.phases else job.seconds
    by_paper: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for job in jobs:
        unit = paper_unit(job.benchmark)
        if unit is not None:
            row = by_paper["/".join(unit)]
            row["jobs"] += 1
            row["seconds"] += job.seconds
            row["cpu_seconds"] += job.cpu_seconds
    total = sum(job.seconds for job in jobs)
    outside = sum(job.outside for job in jobs)
    return {
        "by_paper": {unit: dict(row) for unit, row in sorted(by_paper.items())},
        "jobs": len(jobs),
        "job_seconds": total,
        "outside_seconds": outside,
        "outside_share": outside / total if total else 0.0,
        "by_rule": {rule: dict(row) for rule, row in sorted(by_rule.items())},
        "slowest": [
            {"benchmark": job.benchmark, "seconds": job.seconds, "outside": job.outside}
            for job in sorted(jobs, key=lambda job: -job.seconds)[:10]
        ],
    }


def print_summary(summary: dict) -> None:
    """The summary as a Markdown table."""
    print(
        f"{summary['jobs']} jobs, {summary['job_seconds']:.0f} s of job time, "
        f"{summary['outside_seconds']:.0f} s ({100 * summary['outside_share']:.0f}%) outside "
        "model computation\n"
    )
    print("| rule | jobs | seconds | outside | startup + imports | model load | write | untimed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for rule, row in summary["by_rule"].items():
        print(
            f"| {rule} | {row['jobs']:.0f} | {row['seconds']:.1f} | {row['outside']:.1f} | "
            f"{row['startup']:.1f} | {row['model_load']:.1f} | {row['write']:.1f} | "
            f"{row['untimed']:.1f} |"
        )
    if summary["by_paper"]:
        print("\n| paper / model | jobs | seconds | CPU seconds |")
        print("|---|---:|---:|---:|")
        for unit, row in summary["by_paper"].items():
            print(
                f"| {unit} | {row['jobs']:.0f} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} |"
            )
    print(
        "\nslowest jobs: "
        + ", ".join(f"{job['benchmark']} {job['seconds']:.0f} s" for job in summary["slowest"][:5])
    )


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description="Where a pipeline run's time went.")
    parser.add_argument("--root", default=str(REPO_ROOT), help="the run's working directory")
    parser.add_argument("--output", default=None, help="JSON output (default: none)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    jobs = collect(root / "benchmarks", root / "logs")
    if not jobs:
        print(f"no benchmark files under {root / 'benchmarks'}: run the pipeline first")
        return None
    summary = summarize(jobs)
    print_summary(summary)
    if args.output:
        write_json(Path(args.output), summary)
    return summary


if __name__ == "__main__":
    main()
