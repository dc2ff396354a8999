"""Where a run's time went: timing lines in logs, matched with benchmark files."""

from __future__ import annotations

import json
from collections import defaultdict

from circuit_repro import timing
from circuit_repro.bench.jobs import collect, paper_unit, summarize
from circuit_repro.timing import parse_timing_line, phase, phase_seconds, timing_line

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_job(root, relative, seconds, log_lines):
    benchmark = root / "benchmarks" / f"{relative}.tsv"
    benchmark.parent.mkdir(parents=True, exist_ok=True)
    benchmark.write_text(HEADER + f"{seconds}\t0:00:10\t1\t1\t1\t1\t0\t0\t0\t1\n")
    if log_lines is not None:
        log = root / "logs" / f"{relative}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(log_lines) + "\n")


def test_timing_line_accounts_for_the_whole_job(monkeypatch):
    # A job is one process; this test process has loaded models in other tests.
    monkeypatch.setattr(timing, "_phase_seconds", defaultdict(float))
    with phase("model_load"), phase("inner"):  # nested phases count once, as the outer
        pass
    line = timing_line(startup=1.0, write=0.5, total=10.0)
    phases = parse_timing_line(line)
    assert "inner" not in phase_seconds()
    assert abs(sum(v for k, v in phases.items() if k != "total") - 10.0) < 1e-2
    assert parse_timing_line("rule x, attempt 1") is None


def test_summary_splits_job_time_into_compute_and_outside(tmp_path):
    timing = {"startup": 1.0, "model_load": 2.0, "write": 0.5, "compute": 6.5, "total": 10.0}
    write_job(
        tmp_path,
        "tasks/m/baseline",
        10.4,
        ["rule baseline, attempt 1", "timing: " + json.dumps(timing)],
    )
    write_job(tmp_path, "notebooks/figure", 4.0, None)  # no log line: all outside
    jobs = collect(tmp_path / "benchmarks", tmp_path / "logs")
    assert [job.rule for job in jobs] == ["notebooks", "baseline"]
    summary = summarize(jobs)
    assert summary["job_seconds"] == 14.4
    # Outside = wall time minus computation: 10.4 - 6.5 for the timed job, all of the other.
    assert abs(summary["outside_seconds"] - (3.9 + 4.0)) < 1e-9
    assert summary["by_rule"]["baseline"]["model_load"] == 2.0
    assert summary["by_rule"]["notebooks"]["untimed"] == 4.0


def test_jobs_are_summed_per_paper_and_model_with_their_cpu_time(tmp_path):
    write_job(tmp_path, "reuse/m/circuit", 10.0, None)
    write_job(tmp_path, "reuse/m/claims", 1.0, None)
    write_job(tmp_path, "notebooks/reuse_m", 2.0, None)
    write_job(tmp_path, "sparks/series@step5/checkpoint", 3.0, None)
    write_job(tmp_path, "sparks/series/claims", 1.5, None)
    write_job(tmp_path, "tasks/m/ioi", 4.0, None)  # no paper's job
    summary = summarize(collect(tmp_path / "benchmarks", tmp_path / "logs"))
    assert paper_unit("models/m/prepare.tsv") is None
    assert paper_unit("notebooks/mcqa_m-sft@step120.tsv") == ("mcqa", "m-sft")
    assert set(summary["by_paper"]) == {"reuse/m", "sparks/series"}
    assert summary["by_paper"]["reuse/m"]["seconds"] == 13.0
    assert summary["by_paper"]["reuse/m"]["jobs"] == 3
    assert summary["by_paper"]["sparks/series"]["seconds"] == 4.5
    assert summary["by_paper"]["reuse/m"]["cpu_seconds"] == 3.0  # write_job's cpu_time is 1
