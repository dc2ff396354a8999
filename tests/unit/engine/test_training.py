"""Seeded training with checkpoints (circuit_repro.engine.training): resuming is
bit-identical to training straight through, on every tiny architecture; batches are
pure functions of the step; a partial or foreign checkpoint is never resumed from."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from circuit_repro.engine.training import (
    LOSS_FILE,
    OPTIMIZER_FILE,
    TrainingPlan,
    answer_batches,
    answer_loss,
    checkpoint_dir,
    latest_checkpoint,
    log_spaced_steps,
    repeated_token_batches,
    train,
)
from circuit_repro.models.load import load_model
from circuit_repro.models.prepare import ensure_prepared


def fresh(model_id):
    """A new copy of a tiny random model (training changes it in place)."""
    model, tokenizer = load_model(ensure_prepared(model_id))
    return model, tokenizer


def plan(steps, checkpoints=(0, 3, 5), **kwargs):
    return TrainingPlan(steps=steps, checkpoints=checkpoints, lr=3e-3, warmup=2, seed=1, **kwargs)


class Crash(Exception):
    pass


def crashing_at(batches, step):
    """``batches``, except that asking for ``step`` crashes the run (a kill mid-run)."""

    def batch_at(s):
        if s == step:
            raise Crash
        return batches(s)

    return batch_at


def test_resume_is_bit_identical_to_training_straight(tiny_model_id, tmp_path):
    model, tokenizer = fresh(tiny_model_id)
    batches = repeated_token_batches(range(5, 200), length=6, batch_size=4, seed=0, bos=1)
    straight = train(model, batches, plan(5), tmp_path / "straight", tokenizer, progress=False)
    interrupted = tmp_path / "interrupted"
    crashed, _ = fresh(tiny_model_id)
    with pytest.raises(Crash):
        train(crashed, crashing_at(batches, 5), plan(5), interrupted, tokenizer, progress=False)
    assert latest_checkpoint(interrupted, plan(5)) == 3
    resumed_model, _ = fresh(tiny_model_id)
    resumed = train(resumed_model, batches, plan(5), interrupted, tokenizer, progress=False)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), resumed_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert straight.losses.equals(resumed.losses)
    assert list(pd.read_csv(interrupted / LOSS_FILE)["step"]) == [1, 2, 3, 4, 5]
    assert set(resumed.checkpoints) == {0, 3, 5}


def test_training_lowers_the_loss_and_saves_loadable_checkpoints(tmp_path):
    model, tokenizer = fresh("tiny-llama")
    batches = repeated_token_batches(range(5, 30), length=4, batch_size=8, seed=0)
    run = train(model, batches, plan(30, (0, 10, 30)), tmp_path, tokenizer, progress=False)
    assert run.losses["loss"].iloc[-5:].mean() < run.losses["loss"].iloc[:5].mean()
    assert set(run.checkpoints) == {0, 10, 30}
    reloaded = AutoModelForCausalLM.from_pretrained(run.checkpoints[30])
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    initial = AutoModelForCausalLM.from_pretrained(run.checkpoints[0])
    assert not torch.equal(next(initial.parameters()), next(reloaded.parameters()))


def test_only_the_named_parameters_train(tmp_path):
    model, tokenizer = fresh("tiny-llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = repeated_token_batches(range(5, 30), length=4, batch_size=4, seed=0)
    train(model, batches, plan(3, (3,), trainable=("model.layers.1.self_attn.",)), tmp_path,
          progress=False)  # fmt: skip
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("model.layers.1.self_attn.") for n in changed)
    with pytest.raises(ValueError, match="match no parameter"):
        train(model, batches, plan(3, (3,), trainable=("nope.",)), tmp_path / "x", progress=False)


def test_partial_and_foreign_checkpoints_are_not_resumed(tmp_path):
    model, tokenizer = fresh("tiny-llama")
    batches = repeated_token_batches(range(5, 30), length=4, batch_size=4, seed=0)
    train(model, batches, plan(5), tmp_path, tokenizer, progress=False)
    assert latest_checkpoint(tmp_path, plan(5)) == 5
    assert latest_checkpoint(tmp_path, plan(6)) is None  # written under another plan
    # Only the latest checkpoint keeps the optimizer state; the others are models only.
    assert not (checkpoint_dir(tmp_path, 3) / OPTIMIZER_FILE).exists()
    (checkpoint_dir(tmp_path, 5) / "checkpoint.json").unlink()  # as if cut mid-write
    assert latest_checkpoint(tmp_path, plan(5)) is None


def test_batches_are_pure_functions_of_the_step(random_tokenizer):
    batches = repeated_token_batches(range(5, 50), length=9, batch_size=3, seed=4, bos=1)
    first = batches(7)
    assert torch.equal(first["input_ids"], batches(7)["input_ids"])
    assert not torch.equal(first["input_ids"], batches(8)["input_ids"])
    periods = set()
    for step in range(40):
        ids = batches(step)["input_ids"]
        period = (ids.shape[1] - 1) // 2
        periods.add(period)
        assert (ids[:, 0] == 1).all()  # BOS
        assert torch.equal(ids[:, 1 : 1 + period], ids[:, 1 + period :])  # written twice
        assert torch.equal(batches(step)["labels"][:, :-1], ids[:, 1:])
    assert periods == set(range(4, 10))  # lengths 4 .. 9 all occur


def test_answer_batches_put_one_target_at_each_prompts_end(random_tokenizer):
    from circuit_repro.tasks.mcqa import generate_mcqa
    from circuit_repro.tasks.records import TaskRecord

    records = [TaskRecord.from_dict(r) for r in generate_mcqa(random_tokenizer, 8, seed=0)]
    batch = answer_batches(random_tokenizer, records, batch_size=5, seed=0)(3)
    assert ((batch["labels"] != -100).sum(1) == 1).all()
    last = batch["attention_mask"].sum(1) - 1
    rows = torch.arange(5)
    assert (batch["labels"][rows, last] != -100).all()


def test_log_spaced_steps_start_at_zero_and_end_at_the_last():
    steps = log_spaced_steps(1000, 8)
    assert steps[0] == 0 and steps[-1] == 1000 and list(steps) == sorted(set(steps))


def test_answer_loss_equals_cross_entropy_over_all_logits(tiny_model_id):
    """The loss unembeds only the labelled positions; the full logits give the same."""
    from circuit_repro.tasks.mcqa import generate_mcqa
    from circuit_repro.tasks.records import TaskRecord

    model, tokenizer = fresh(tiny_model_id)
    records = [TaskRecord.from_dict(r) for r in generate_mcqa(tokenizer, 8, seed=0)]
    # Prompts of several lengths, so the labelled positions differ between rows.
    records = [replace(r, prompt=" x" * (i % 3) + r.prompt) for i, r in enumerate(records)]
    batch = answer_batches(tokenizer, records, batch_size=5, seed=0)(1)
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).double(), batch["labels"].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(answer_loss(model, batch).double(), reference, rtol=1e-5, atol=1e-6)
