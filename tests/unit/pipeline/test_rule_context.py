"""The rule context of every script (circuit_repro.pipeline.rule_context), with a
stand-in for Snakemake's script object: log, atomic outputs, sidecars, errors, retries."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from circuit_repro.errors import UserFacingError
from circuit_repro.pipeline.rule_context import (
    FAIL_ONCE_VARIABLE,
    MissingOutputError,
    rule_context,
    temporary_path,
)


class BadTask(UserFacingError):
    pass


def job(tmp_path, *, attempt=1, rule="baseline", **outputs):
    """A stand-in for ``snakemake`` with named outputs under ``tmp_path/results``."""
    outputs = outputs or {"scores": "scores.csv", "summary": "summary.json"}
    (tmp_path / "results").mkdir(exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("{}\n")
    return SimpleNamespace(
        rule=rule,
        log=[str(tmp_path / "logs" / f"{rule}.log")],
        output={name: str(tmp_path / "results" / path) for name, path in outputs.items()},
        input={"prompts": str(prompts), "tables": ["a.csv", "b.csv"]},
        params={
            "seed": 7,
            "compute": {"device": "cpu", "batch_size": 4},
            "entry": lambda wildcards: None,  # not plain data: left out of the sidecar
            "blob": object(),
        },
        wildcards={"model": "tiny-llama", "task": "ioi"},
        resources=SimpleNamespace(attempt=attempt),
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name)


def read_log(stand_in) -> str:
    return Path(stand_in.log[0]).read_text()


def test_temporary_names_keep_the_extension():
    assert temporary_path("results/x/scores.csv") == Path("results/x/.scores.csv.partial.csv")
    assert temporary_path("a/t.csv.gz") == Path("a/.t.csv.gz.partial.csv.gz")
    assert temporary_path("a/figures") == Path("a/.figures.partial")
    assert temporary_path("a/qwen2.5-0.5b.json") == Path("a/.qwen2.5-0.5b.json.partial.json")


def test_outputs_are_renamed_into_place_with_a_sidecar_each(tmp_path):
    stand_in = job(tmp_path)
    with rule_context(stand_in) as ctx:
        scores = ctx.output.scores
        assert scores == ctx.output("scores") == ctx.output["scores"] == ctx.output[0]
        assert scores.name == ".scores.csv.partial.csv" and scores.parent == tmp_path / "results"
        scores.write_text("a,b\n1,2\n")
        ctx.output("summary").write_text("{}")
        ctx.provenance(n_records=3)
        # Nothing under a final name until the body has finished.
        assert not Path(stand_in.output["scores"]).exists()
    assert Path(stand_in.output["scores"]).read_text() == "a,b\n1,2\n"
    assert leftovers(tmp_path) == []
    for name, final in stand_in.output.items():
        sidecar = json.loads(Path(final + ".provenance.json").read_text())
        assert sidecar["result"] == Path(final).name, name
        assert sidecar["rule"] == "baseline"
        assert sidecar["model"] == "tiny-llama" and sidecar["task"] == "ioi"
        assert sidecar["seed"] == 7 and sidecar["n_records"] == 3
        assert sidecar["params"] == {"compute": {"device": "cpu", "batch_size": 4}}
        assert sidecar["inputs"] == {
            "prompts": stand_in.input["prompts"],
            "tables": ["a.csv", "b.csv"],
        }
        assert {"git_commit", "packages", "created"} <= set(sidecar)


def test_a_failed_body_leaves_no_final_file_and_no_temporaries(tmp_path, capsys):
    stand_in = job(tmp_path)
    stale = Path(stand_in.output["scores"] + ".provenance.json")
    stale.write_text("{}")  # of a result that an earlier run wrote and Snakemake removed
    with pytest.raises(SystemExit) as exit_info, rule_context(stand_in) as ctx:
        ctx.output.scores.write_text("half")
        ctx.output.summary.write_text("{}")
        raise RuntimeError("bug in the middle")
    assert exit_info.value.code == 1
    assert not any(Path(path).exists() for path in stand_in.output.values())
    assert list((tmp_path / "results").iterdir()) == []  # no sidecars, no temporaries
    log = read_log(stand_in)
    assert "Traceback" in log and "RuntimeError: bug in the middle" in log
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: RuntimeError: bug in the middle (full traceback in {stand_in.log[0]})"]


def test_a_user_error_is_one_line_on_the_terminal_and_in_the_log(tmp_path, capsys):
    stand_in = job(tmp_path)
    with pytest.raises(SystemExit) as exit_info, rule_context(stand_in) as ctx:
        ctx.output.scores.write_text("x")
        raise BadTask("task 'ioi': name 'Bartholomew' is several tokens; pick another")
    assert exit_info.value.code == 1
    line = "error: task 'ioi': name 'Bartholomew' is several tokens; pick another"
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert line in read_log(stand_in) and "Traceback" not in read_log(stand_in)
    assert leftovers(tmp_path) == []


def test_a_full_disk_is_one_line_and_keeps_earlier_results(tmp_path, capsys):
    earlier = tmp_path / "results" / "earlier.csv"
    stand_in = job(tmp_path)
    earlier.write_text("finished before\n")

    def write_until_full(path: Path) -> None:
        """What a writer does on a full disk: part of the data, then ENOSPC."""
        with open(path, "w") as handle:
            handle.write("a,b\n1,")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with pytest.raises(SystemExit) as exit_info, rule_context(stand_in) as ctx:
        write_until_full(ctx.output.scores)
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    # The output is named by its final name, not the hidden temporary being written.
    assert line.startswith(f"error: disk full while writing {tmp_path}/results/scores.csv (")
    assert "(rule baseline, " in line and " free in " in line
    assert line.endswith("finished results are kept and this job starts again")
    assert earlier.read_text() == "finished before\n"
    assert not Path(stand_in.output["scores"]).exists()
    assert leftovers(tmp_path) == []  # the half-written temporary is gone
    assert line in read_log(stand_in) and "Traceback" not in read_log(stand_in)


def test_log_gets_output_logging_and_the_attempt(tmp_path, capsys):
    stand_in = job(tmp_path, attempt=3, scores="scores.csv")
    with rule_context(stand_in) as ctx:
        print("to stdout")
        print("to stderr", file=sys.stderr)
        logging.getLogger("circuit_repro.test").info("to logging")
        ctx.output.scores.write_text("x")
    log = read_log(stand_in)
    assert log.splitlines()[0] == "rule baseline, attempt 3"
    for line in ("to stdout", "to stderr", "to logging"):
        assert line in log
    assert capsys.readouterr() == ("", "")


def test_attempt_defaults_to_one_without_the_resource(tmp_path):
    stand_in = job(tmp_path, scores="scores.csv")
    stand_in.resources = SimpleNamespace()
    with rule_context(stand_in) as ctx:
        assert ctx.attempt == 1
        ctx.output.scores.write_text("x")
    assert "rule baseline, attempt 1" in read_log(stand_in)


def test_outputs_written_directly_and_folders(tmp_path):
    stand_in = job(
        tmp_path,
        manifest="fetched.json",
        marker="model/provenance.json",
        folder="figures",
        loose="loose.txt",
    )
    with rule_context(stand_in) as ctx:
        ctx.final("manifest").write_text("{}")
        marker = ctx.final("marker")  # a provenance file: no sidecar of its own
        marker.write_text("{}")
        folder = ctx.output.folder
        folder.mkdir()
        (folder / "a.png").write_bytes(b"png")
        Path(stand_in.output["loose"]).write_text("written without asking")
    results = tmp_path / "results"
    assert (results / "fetched.json.provenance.json").exists()
    assert not (results / "model/provenance.json.provenance.json").exists()
    assert (results / "figures/a.png").read_bytes() == b"png"
    assert json.loads((results / "figures/provenance.json").read_text())["result"] == "figures"
    assert (results / "loose.txt.provenance.json").exists()
    assert "written directly under its final name" in read_log(stand_in)
    assert leftovers(tmp_path) == []

    # A rerun replaces the folder as a whole.
    with rule_context(stand_in) as ctx:
        for name in ("manifest", "marker", "loose"):
            ctx.final(name).write_text("{}")
        ctx.output.folder.mkdir()
        (ctx.output.folder / "b.png").write_bytes(b"png")
    assert sorted(p.name for p in (results / "figures").iterdir()) == ["b.png", "provenance.json"]


def test_an_output_the_body_did_not_write_is_a_bug(tmp_path, capsys):
    stand_in = job(tmp_path)
    with pytest.raises(SystemExit), rule_context(stand_in) as ctx:
        ctx.output.scores.write_text("x")
        ctx.output("summary")  # asked for, never written
    assert f"{MissingOutputError.__name__}: rule 'baseline' did not write its output" in (
        capsys.readouterr().err
    )
    assert not any(Path(path).exists() for path in stand_in.output.values())
    assert leftovers(tmp_path) == []


def test_unknown_output_names_are_an_error(tmp_path, capsys):
    stand_in = job(tmp_path, scores="scores.csv")
    with pytest.raises(SystemExit), rule_context(stand_in) as ctx:
        ctx.output.score  # noqa: B018
    assert "no output named 'score' (named: scores)" in capsys.readouterr().err


def test_a_stale_temporary_from_a_killed_attempt_is_replaced(tmp_path):
    stand_in = job(tmp_path, scores="scores.csv")
    stale = temporary_path(stand_in.output["scores"])
    stale.write_text("killed halfway")
    with rule_context(stand_in) as ctx, open(ctx.output.scores, "a") as handle:
        handle.write("fresh")
    assert Path(stand_in.output["scores"]).read_text() == "fresh"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="no SIGTERM")
def test_sigterm_removes_the_temporaries(tmp_path):
    stand_in = job(tmp_path, scores="scores.csv")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info, rule_context(stand_in) as ctx:
        ctx.output.scores.write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert leftovers(tmp_path) == [] and not Path(stand_in.output["scores"]).exists()
    assert signal.getsignal(signal.SIGTERM) is before


def test_fail_once_fails_the_first_attempt_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(FAIL_ONCE_VARIABLE, "other_rule, baseline")
    ran = []

    def run(attempt, rule="baseline"):
        with rule_context(job(tmp_path, attempt=attempt, rule=rule, out="out.txt")) as ctx:
            ran.append(attempt)
            ctx.output.out.write_text("x")

    with pytest.raises(SystemExit) as exit_info:
        run(1)
    assert exit_info.value.code == 1 and ran == []
    message = "error: injected failure of rule 'baseline' on attempt 1"
    assert message in (tmp_path / "logs/baseline.log").read_text()
    assert message in capsys.readouterr().err
    run(2)
    assert ran == [2] and "rule baseline, attempt 2" in (tmp_path / "logs/baseline.log").read_text()
    run(1, rule="build_task")  # not named: runs
    assert ran == [2, 1]


def test_no_injection_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(FAIL_ONCE_VARIABLE, raising=False)
    with rule_context(job(tmp_path, out="out.txt")) as ctx:
        ctx.output.out.write_text("x")
    assert (tmp_path / "results/out.txt").exists()


def test_works_without_a_log(tmp_path, capsys):
    stand_in = job(tmp_path, scores="scores.csv")
    stand_in.log = []
    with rule_context(stand_in) as ctx:
        print("visible")
        ctx.output.scores.write_text("x")
    assert "visible" in capsys.readouterr().out
    with pytest.raises(SystemExit), rule_context(stand_in):
        raise BadTask("one line")
    assert capsys.readouterr().err.strip() == "error: one line"
