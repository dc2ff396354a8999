"""Seeded training with checkpoints that resume bit-identically.

Training dynamics papers (Olsson et al. 2022 on induction heads; Park, Jeong and Kang
2025, "Thinking Sparks!", on heads that emerge in post-training) analyse a series of
checkpoints. :func:`train` produces one: AdamW on the parameters a
:class:`TrainingPlan` names, a loss on the positions whose target is not ``-100`` (the
answer token only, for supervised fine-tuning), and at each checkpoint step a folder
with the model (``save_pretrained``, loadable like any prepared model) and the full
training state.

Resuming is exact because nothing is carried between steps but the state that is
saved: the batch of step ``s`` is a pure function of ``(seed, s)`` (the caller's
``batch_at``), the learning rate a function of ``s``, and the model and AdamW moments
are restored from the checkpoint. On the CPU, ``N`` steps, a save, a resume and ``M``
more give the same weights, bit for bit, as ``N + M`` steps straight.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord

#: One training batch: ``input_ids [batch, pos]`` and ``labels [batch, pos]`` (the target
#: of each position, ``-100`` where no loss is taken), optionally ``attention_mask``.
Batch = Mapping[str, torch.Tensor]

#: Name of the training-state file inside a checkpoint folder (step, losses, plan).
STATE_FILE = "training_state.pt"
#: The optimizer's state, kept in the latest checkpoint only (resuming needs no other,
#: and AdamW's moments are twice the trained weights).
OPTIMIZER_FILE = "optimizer.pt"
#: Name of the per-step loss log inside the output folder.
LOSS_FILE = "losses.csv"


@dataclass(frozen=True)
class TrainingPlan:
    """What to train and how.

    Attributes:
        steps: Optimizer steps in all.
        checkpoints: Steps after which to save (each at most ``steps``); step 0 is the
            model before training.
        lr: Peak learning rate of AdamW.
        warmup: Steps of linear warm-up from 0 to ``lr``; constant afterwards.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        max_grad_norm: Gradient clipping (None: none).
        trainable: Parameter-name prefixes to train (e.g. ``model.layers.20.``); empty
            trains every parameter.
        seed: Seed of the batches (through ``batch_at``) and of torch's generator.
    """

    steps: int
    checkpoints: tuple[int, ...]
    lr: float = 1e-3
    warmup: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = 1.0
    trainable: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [c for c in self.checkpoints if not 0 <= c <= self.steps]
        if bad:
            raise ValueError(f"checkpoint steps {bad} lie outside 0..{self.steps}")
        if self.steps < 1:
            raise ValueError("a training plan needs at least one step")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (1-based)."""
        if self.warmup and step <= self.warmup:
            return self.lr * step / self.warmup
        return self.lr


def log_spaced_steps(last: int, count: int, first: int = 1) -> tuple[int, ...]:
    """About ``count`` distinct steps from ``first`` to ``last``, evenly spaced in log
    scale, with 0 (the initial model) in front: where a training curve changes fast
    early on and slowly later."""
    steps = np.unique(np.round(np.geomspace(first, last, count)).astype(int))
    return (0, *(int(s) for s in steps))


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    """The folder of the checkpoint after ``step`` optimizer steps."""
    return Path(out_dir) / f"step{step:06d}"


def trainable_parameters(model: torch.nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Names of the parameters a plan trains (all of them for no prefixes).

    Raises:
        ValueError: a prefix matches no parameter.
    """
    names = [name for name, _ in model.named_parameters()]
    if not prefixes:
        return names
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise ValueError(f"trainable prefixes {unmatched} match no parameter (e.g. {names[0]!r})")
    return [n for n in names if any(n.startswith(p) for p in prefixes)]


def answer_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the targets in ``batch['labels']`` (positions with ``-100``
    take no loss); ``labels[b, t]`` is the token expected after position ``t``.

    Only the positions that carry a label anywhere in the batch go through the
    unembedding (``logits_to_keep``, where the model's forward takes it): with the loss
    on one answer token per prompt, that skips most of the vocabulary-sized matmul and
    its gradient, and the loss is the same.
    """
    labels = batch["labels"]
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        positions = torch.nonzero((labels != -100).any(0)).flatten()
        kwargs["logits_to_keep"] = positions
        labels = labels[:, positions]
    logits = model(**kwargs).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
    )


def _save_checkpoint(model, tokenizer, optimizer, plan, step, losses, out_dir) -> Path:
    """Write the model and the training state after ``step`` steps, atomically (a
    partial folder is never taken for a checkpoint)."""
    final = checkpoint_dir(out_dir, step)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    torch.save(
        {"step": step, "torch_rng": torch.get_rng_state(), "losses": list(losses),
         "plan": asdict(plan)},
        partial / STATE_FILE,
    )  # fmt: skip
    torch.save(optimizer.state_dict(), partial / OPTIMIZER_FILE)
    (partial / "checkpoint.json").write_text(json.dumps({"step": step, "plan": asdict(plan)}))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for earlier in Path(out_dir).glob(f"step*/{OPTIMIZER_FILE}"):
        if earlier.parent != final:
            earlier.unlink()
    return final


def latest_checkpoint(out_dir: str | Path, plan: TrainingPlan) -> int | None:
    """The last complete checkpoint of ``plan`` in ``out_dir`` that can be resumed from
    (it holds the optimizer state; None: none). A folder written under another plan is
    not resumed from."""
    found = None
    for step in sorted(plan.checkpoints):
        folder = checkpoint_dir(out_dir, step)
        marker = folder / "checkpoint.json"
        if not all((folder / name).exists() for name in (STATE_FILE, OPTIMIZER_FILE)):
            continue
        if not marker.exists():
            continue
        if json.loads(marker.read_text())["plan"] != json.loads(json.dumps(asdict(plan))):
            continue
        found = step
    return found


@dataclass
class TrainingRun:
    """What :func:`train` returns: the per-step losses and the checkpoint folders."""

    losses: pd.DataFrame
    checkpoints: dict[int, Path] = field(default_factory=dict)


def train(
    model: torch.nn.Module,
    batch_at: Callable[[int], Batch],
    plan: TrainingPlan,
    out_dir: str | Path,
    tokenizer=None,
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = answer_loss,
    resume: bool = True,
    progress: bool = True,
) -> TrainingRun:
    """Train ``model`` in place along ``plan``, saving a checkpoint at each planned step.

    Args:
        model: A causal LM (``save_pretrained`` and ``forward(input_ids=...)``).
        batch_at: The batch of optimizer step ``s`` (1-based), a pure function of ``s``
            and the caller's seed: the same step always gets the same batch, so a
            resumed run sees the data a straight run would.
        plan: Steps, checkpoints, optimiser and trainable parameters.
        out_dir: Where the checkpoints (``step000123/``) and ``losses.csv`` go.
        tokenizer: Saved with every checkpoint, so that each is a model folder.
        loss_fn: Loss of a batch (default: cross-entropy on the labelled positions).
        resume: Continue from the last complete checkpoint of the same plan in
            ``out_dir`` (its weights and optimizer state replace the model's).
        progress: Show a progress bar.

    Returns:
        The loss of every step (``step, loss, lr``) and ``{step: checkpoint folder}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = set(trainable_parameters(model, plan.trainable))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    parameters = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.AdamW(
        parameters, lr=plan.lr, betas=plan.betas, weight_decay=plan.weight_decay
    )
    start, losses = 0, []
    torch.manual_seed(plan.seed)
    if resume and (found := latest_checkpoint(out_dir, plan)) is not None:
        folder = checkpoint_dir(out_dir, found)
        # from_pretrained restores tied weights as the model class ties them.
        saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict())
        del saved
        state = torch.load(folder / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=False))
        torch.set_rng_state(state["torch_rng"])
        start, losses = state["step"], list(state["losses"])
    checkpoints = {
        s: checkpoint_dir(out_dir, s)
        for s in plan.checkpoints
        if s <= start and (checkpoint_dir(out_dir, s) / STATE_FILE).exists()
    }
    if 0 in plan.checkpoints and start == 0:
        checkpoints[0] = _save_checkpoint(model, tokenizer, optimizer, plan, 0, losses, out_dir)
    model.train()
    bar = tqdm(range(start + 1, plan.steps + 1), desc="training", disable=not progress,
               initial=start, total=plan.steps)  # fmt: skip
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = plan.lr_at(step)
        loss = loss_fn(model, batch_at(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if plan.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, plan.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step in plan.checkpoints:
            model.eval()
            checkpoints[step] = _save_checkpoint(
                model, tokenizer, optimizer, plan, step, losses, out_dir
            )
            model.train()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    table = pd.DataFrame(
        {
            "step": np.arange(1, len(losses) + 1),
            "loss": losses,
            "lr": [plan.lr_at(s) for s in range(1, len(losses) + 1)],
        }
    )
    table.to_csv(out_dir / LOSS_FILE, index=False)
    return TrainingRun(table, dict(sorted(checkpoints.items())))


def answer_batches(
    tokenizer, records: Sequence[TaskRecord], batch_size: int, seed: int
) -> Callable[[int], Batch]:
    """Supervised fine-tuning batches on the answer token only.

    Step ``s`` draws ``batch_size`` records with ``numpy.random.default_rng([seed, s])``
    (a pure function of the step, as :func:`train` needs): the prompts, right-padded,
    with one target, the answer's token at the prompt's last position.
    """
    encoded = [tokenizer(r.prompt)["input_ids"] for r in records]
    answers = [single_token_id(tokenizer, r.answer) for r in records]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch_at(step: int) -> Batch:
        rows = np.random.default_rng([seed, step]).choice(len(records), batch_size)
        width = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for b, i in enumerate(rows):
            input_ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[b, : len(encoded[i])] = 1
            labels[b, len(encoded[i]) - 1] = answers[i]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return batch_at


def repeated_token_batches(
    vocab: Sequence[int], length: int, batch_size: int, seed: int, bos: int | None = None
) -> Callable[[int], Batch]:
    """Random token sequences written twice (the task on which induction heads form;
    Olsson et al. 2022): the second copy is predictable only by looking back at what
    followed the same token in the first.

    Each step draws its sequence length between 4 and ``length``. With one fixed length
    a head attending a fixed distance back predicts the copy without matching any
    token (trained at one length, such a model fails at every other); with many, only
    matching the current token does.
    Loss on every next token; step ``s``'s batch is drawn with ``default_rng([seed, s])``.
    """
    vocab_ids = np.asarray(vocab)

    def batch_at(step: int) -> Batch:
        rng = np.random.default_rng([seed, step])
        period = int(rng.integers(min(4, length), length + 1))
        first = vocab_ids[rng.integers(len(vocab_ids), size=(batch_size, period))]
        rows = np.concatenate([first, first], axis=1)
        if bos is not None:
            rows = np.concatenate([np.full((batch_size, 1), bos), rows], axis=1)
        input_ids = torch.from_numpy(rows).long()
        labels = torch.full_like(input_ids, -100)
        labels[:, :-1] = input_ids[:, 1:]
        return {"input_ids": input_ids, "labels": labels}

    return batch_at
