"""Factual recall: 1-D patches at the last subject token and the rank-1 edits they
define (Makelov, Lange & Nanda 2023, §5 and App. C).

For each pair of known facts of one relation (base subject -> attribute ``a``, source
subject -> attribute ``b``, prompts that differ only inside the subject), a unit
direction ``v`` in an MLP's hidden activations is optimised so that patching the
source's coordinate along ``v`` into the base at the last subject token makes the
model prefer ``b`` (objective: ``logit(a) - logit(b)`` at the final token, minimised,
as the authors' code). The patch changes the MLP's output at that position by
``a_vec = ((u - w) . v) (v @ W_out)`` (``u``, ``w`` the source's and base's hidden
activations), which is what the rank-1 edit ``W_out += k a_vec^T`` does wherever the
key ``k`` reads 1; with ROME's key ``k = S^-1 w / (w^T S^-1 w)`` (``S`` the second
moment of the layer's hidden activations) it reads exactly 1 at the base position.

Measured per pair, at each configured layer:

- on the base prompt: the patch along ``v``, along its row-space and kernel parts
  (with respect to ``W_out``), the whole MLP patched, and the edit: how often the
  model's top token becomes ``b``;
- on held-out prompts about the same subject (the relation's other templates, which
  the model also answers correctly): how often the edit rewrites the fact to ``b``,
  against a random rank-1 edit of the same norm (the same key, a random output
  direction in the MLP's image scaled to ``|a_vec|``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.engine.forward import logits_at, stop_after
from circuit_repro.engine.hooks import cache_activations, with_hooks
from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.engine.subspace import (
    PositionRuns,
    collect_at,
    fewest_shapes,
    frozen,
    full_patch,
    interchange_hook,
    layer_of,
    patch_along,
    position_hook,
    row_space,
    split,
)
from circuit_repro.papers.subspace import SubspaceSettings
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.facts import SUBJECT_LAST, prompts_about

#: Ridge added to the activations' second moment, as a share of its mean eigenvalue:
#: a few thousand tokens do not determine a 1536- or 2048-dimensional moment.
RIDGE = 0.01

#: Interventions on the base prompt, in table order.
BASE_INTERVENTIONS = ("direction", "rowspace", "nullspace", "full", "edit")


@dataclass
class FactPairs:
    """Known fact pairs: base and source prompts (same layout), answers, held-out prompts."""

    records: list  # TaskRecords
    base: list[list[int]]
    source: list[list[int]]
    subject_last: list[int]
    end: list[int]
    answer: torch.Tensor  # [pairs] token of a
    other: torch.Tensor  # [pairs] token of b
    held_out: list[list[dict]]  # per pair, prompts about the base subject

    def __len__(self) -> int:
        return len(self.base)


@torch.no_grad()
def _top_tokens(loaded, prompts: Sequence[Sequence[int]], hooks=()) -> np.ndarray:
    """The top next-token prediction at each prompt's last position (full forward)."""
    out = np.zeros(len(prompts), dtype=np.int64)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        by_length.setdefault(len(ids), []).append(i)
    device = loaded.hf_model.device
    for rows in by_length.values():
        tokens = torch.tensor([list(prompts[i]) for i in rows], device=device)
        last = torch.full((len(rows),), tokens.shape[1] - 1, device=device)
        with with_hooks(loaded.bridge, hooks(rows) if callable(hooks) else hooks):
            logits = logits_at(loaded, tokens, last)
        out[rows] = logits.argmax(-1).cpu().numpy()
    return out


def known_pairs(loaded, records, n_pairs: int) -> FactPairs:
    """``n_pairs`` records whose fact, counterfactual fact and at least one held-out
    prompt about the subject the model answers correctly (top token over the whole
    vocabulary, as the authors filter CounterFact), from as few prompt shapes as
    possible (:func:`~circuit_repro.engine.subspace.fewest_shapes`)."""
    tokenizer = loaded.tokenizer
    base = [tokenizer(r.prompt)["input_ids"] for r in records]
    source = [tokenizer(r.counterfactual("other_subject").prompt)["input_ids"] for r in records]
    answer = np.array([single_token_id(tokenizer, r.answer) for r in records])
    other = np.array([single_token_id(tokenizer, r.wrong_answer) for r in records])
    held_out = [
        prompts_about(tokenizer, r.fields["relation"], r.fields["subject"], r.fields["template"])
        for r in records
    ]
    flat = [p["input_ids"] for prompts in held_out for p in prompts]
    owner = [i for i, prompts in enumerate(held_out) for _ in prompts]
    base_ok = _top_tokens(loaded, base) == answer
    source_ok = _top_tokens(loaded, source) == other
    flat_ok = _top_tokens(loaded, flat) == answer[owner] if flat else np.zeros(0, dtype=bool)
    known_held_out = [[] for _ in records]
    for prompt, i, ok in zip([p for ps in held_out for p in ps], owner, flat_ok, strict=True):
        if ok:
            known_held_out[i].append(prompt)
    known = [i for i in range(len(records)) if base_ok[i] and source_ok[i] and known_held_out[i]]
    shapes = [(len(base[i]), records[i].roles[SUBJECT_LAST]) for i in known]
    keep = [known[j] for j in fewest_shapes(shapes, n_pairs)]
    return FactPairs(
        records=[records[i] for i in keep],
        base=[base[i] for i in keep],
        source=[source[i] for i in keep],
        subject_last=[records[i].roles[SUBJECT_LAST] for i in keep],
        end=[records[i].end for i in keep],
        answer=torch.as_tensor(answer[keep]),
        other=torch.as_tensor(other[keep]),
        held_out=[known_held_out[i] for i in keep],
    )


def fit_fact_directions(
    runs: PositionRuns,
    hook: str,
    source: torch.Tensor,
    pairs: FactPairs,
    steps: int,
    lr: float,
    seed: int,
) -> torch.Tensor:
    """One unit direction per pair (``[pairs, d_mlp]``), each minimising its pair's
    ``logit(a) - logit(b)`` under the 1-D patch (Adam from a seeded random start; the
    rows are independent, so all pairs train together)."""
    generator = torch.Generator().manual_seed(seed)
    device = runs.loaded.hf_model.device
    raw = torch.randn(len(pairs), source.shape[-1], generator=generator).to(device)
    raw.requires_grad_(True)
    optimizer = torch.optim.Adam([raw], lr=lr)
    token_ids = torch.stack([pairs.answer, pairs.other], dim=1)
    source = source.to(device)

    def along_raw(at, rows):
        return patch_along(at, source[rows], raw[rows] / raw[rows].norm(dim=-1, keepdim=True))

    with frozen(runs.loaded.hf_model):
        for _step in tqdm(range(steps), desc=f"fact directions {hook}"):
            optimizer.zero_grad()
            for g, group in enumerate(runs.groups):
                members = np.arange(len(group.rows))
                logits = runs.logits(g, members, [position_hook(hook, along_raw)], token_ids)
                (logits[:, 0] - logits[:, 1]).sum().backward()
            optimizer.step()
    return (raw / raw.norm(dim=-1, keepdim=True)).detach().cpu()


def second_moment(loaded, prompts: Sequence[Sequence[int]], hook: str) -> torch.Tensor:
    """``S = E[h h^T]`` of the hidden activations at ``hook`` over every token of
    ``prompts`` (float64), plus :data:`RIDGE` of its mean eigenvalue."""
    total, count = None, 0
    device = loaded.hf_model.device
    by_length: dict[int, list[Sequence[int]]] = {}
    for ids in prompts:
        by_length.setdefault(len(ids), []).append(ids)
    stop = layer_of(hook) + 1
    with torch.no_grad():
        for group in by_length.values():
            tokens = torch.tensor([list(ids) for ids in group], device=device)
            with (
                cache_activations(loaded.bridge, [hook]) as cached,
                stop_after(loaded.bridge, stop if stop < loaded.n_layers else None),
            ):
                loaded.hf_model.base_model(input_ids=tokens, use_cache=False)
            h = cached[hook].reshape(-1, cached[hook].shape[-1]).double().cpu()
            total = h.T @ h if total is None else total + h.T @ h
            count += h.shape[0]
    moment = total / count
    return moment + RIDGE * moment.trace() / moment.shape[0] * torch.eye(moment.shape[0])


def rank_one_edits(
    directions: torch.Tensor,
    base_hidden: torch.Tensor,
    source_hidden: torch.Tensor,
    w_out: torch.Tensor,
    moment: torch.Tensor,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys ``[pairs, d_mlp]``, values ``[pairs, d_model]`` of the edits the patches
    define, and values of random edits of the same norm (see the module docstring)."""
    w = base_hidden.double()
    solved = torch.linalg.solve(moment, w.T).T  # S^-1 w, [pairs, d_mlp]
    keys = solved / (solved * w).sum(-1, keepdim=True)
    coefficient = ((source_hidden.double() - w) * directions.double()).sum(-1, keepdim=True)
    values = coefficient * (directions.double() @ w_out.double())
    generator = torch.Generator().manual_seed(seed)
    random_hidden = torch.randn(directions.shape, generator=generator, dtype=torch.float64)
    random_values = random_hidden @ w_out.double()
    random_values = random_values / random_values.norm(dim=-1, keepdim=True)
    random_values = random_values * values.norm(dim=-1, keepdim=True)
    return keys.float(), values.float(), random_values.float()


def _edit_hooks(layer: int, keys: torch.Tensor, values: torch.Tensor, owner: Sequence[int]):
    """Hooks that apply prompt ``i``'s edit (pair ``owner[i]``): the MLP's output gains
    ``(h . k) a`` at every position (``h`` its hidden activation)."""
    captured = {}

    def make(rows):
        pair = torch.as_tensor([owner[r] for r in rows])

        def grab(activation, hook):
            captured["h"] = activation

        def add(activation, hook):
            k = keys[pair].to(activation.device, activation.dtype)
            a = values[pair].to(activation.device, activation.dtype)
            coefficient = torch.einsum("rpd,rd->rp", captured["h"], k)
            return activation + coefficient[..., None] * a[:, None, :]

        return [
            (f"blocks.{layer}.mlp.hook_post", grab),
            (f"blocks.{layer}.mlp.out.hook_out", add),
        ]

    return make


def run_layer(loaded, pairs: FactPairs, layer: int, settings: SubspaceSettings) -> pd.DataFrame:
    """Per pair at one layer: success of each base-prompt intervention and of the
    edits on held-out prompts (``layer, pair, subject, relation, <intervention>...``)."""
    hook = f"blocks.{layer}.mlp.hook_post"
    w_out = loaded.bridge.blocks[layer].mlp.W_out.detach().cpu()
    acts = collect_at(loaded, pairs.base, pairs.subject_last, [hook])[hook]
    source_acts = collect_at(loaded, pairs.source, pairs.subject_last, [hook])[hook]
    runs = PositionRuns(loaded, pairs.base, pairs.subject_last, pairs.end, layer)
    directions = fit_fact_directions(
        runs, hook, source_acts, pairs, settings.facts_steps, settings.facts_lr, settings.seed
    )
    basis = row_space(w_out)
    parts = [split(v, basis) for v in directions]
    row = torch.stack([p[0] for p in parts])
    null = torch.stack([p[1] for p in parts])
    unit_rows = {
        "direction": directions,
        "rowspace": row / row.norm(dim=-1, keepdim=True).clamp_min(1e-12),
        "nullspace": null / null.norm(dim=-1, keepdim=True).clamp_min(1e-12),
    }
    table = pd.DataFrame(
        {
            "layer": layer,
            "pair": range(len(pairs)),
            "subject": [r.fields["subject"] for r in pairs.records],
            "other_subject": [
                r.counterfactual("other_subject").fields["subject"] for r in pairs.records
            ],
            "relation": [r.fields["relation"] for r in pairs.records],
            "answer": [r.answer for r in pairs.records],
            "new_answer": [r.wrong_answer for r in pairs.records],
            "rowspace_norm": row.norm(dim=-1).numpy(),
        }
    )
    for name, vectors in unit_rows.items():
        along = position_hook(
            hook, lambda at, rows, v=vectors: patch_along(at, source_acts[rows], v[rows])
        )
        logits = runs.all_logits([along])
        table[name] = (logits.argmax(-1) == pairs.other).numpy()
    logits = runs.all_logits([interchange_hook(hook, full_patch, source_acts)])
    table["full"] = (logits.argmax(-1) == pairs.other).numpy()

    moment = second_moment(
        loaded, [*pairs.base, *[p["input_ids"] for ps in pairs.held_out for p in ps]], hook
    )
    keys, values, random_values = rank_one_edits(
        directions, acts, source_acts, w_out, moment, settings.seed + 1
    )
    table["edit"] = (
        _top_tokens(loaded, pairs.base, _edit_hooks(layer, keys, values, range(len(pairs))))
        == pairs.other.numpy()
    )
    flat = [p["input_ids"] for ps in pairs.held_out for p in ps]
    owner = [i for i, ps in enumerate(pairs.held_out) for _ in ps]
    for name, vals in (("edit", values), ("random_edit", random_values)):
        top = _top_tokens(loaded, flat, _edit_hooks(layer, keys, vals, owner))
        rewritten = top == pairs.other.numpy()[owner]
        changed = top != pairs.answer.numpy()[owner]
        table[f"held_out_{name}"] = [
            rewritten[np.array(owner) == i].mean() for i in range(len(pairs))
        ]
        table[f"held_out_{name}_changed"] = [
            changed[np.array(owner) == i].mean() for i in range(len(pairs))
        ]
    table["n_held_out"] = [len(ps) for ps in pairs.held_out]
    return table


SUMMARY_COLUMNS = (
    *BASE_INTERVENTIONS,
    "held_out_edit",
    "held_out_random_edit",
    "held_out_edit_changed",
    "held_out_random_edit_changed",
)


def summarize(per_pair: pd.DataFrame, settings: SubspaceSettings) -> pd.DataFrame:
    """Per layer: the success rate of each intervention with a bootstrap CI over pairs,
    and the contrasts the claims use (edit minus random edit on held-out prompts;
    direction minus its row-space part on the base prompt), same resamples."""
    rows = []
    for layer, table in per_pair.groupby("layer", sort=True):
        values = table[list(SUMMARY_COLUMNS)].to_numpy(dtype=float)  # [pairs, k]
        columns = list(SUMMARY_COLUMNS)
        edit, random_edit = columns.index("held_out_edit"), columns.index("held_out_random_edit")
        direction, rowspace = columns.index("direction"), columns.index("rowspace")

        def statistic(idx, values=values, pairs=((edit, random_edit), (direction, rowspace))):
            means = values[idx].mean(0)
            return np.concatenate([means, [means[a] - means[b] for a, b in pairs]])

        samples = bootstrap(statistic, [len(values)], settings.bootstrap_samples, settings.seed)
        point = statistic(np.arange(len(values)))
        names = [*columns, "edit_minus_random_edit", "direction_minus_rowspace"]
        for j, name in enumerate(names):
            low, high = percentile_interval(samples[:, j], settings.confidence)
            rows.append(
                {
                    "layer": layer,
                    "measure": name,
                    "value": point[j],
                    "ci_low": low,
                    "ci_high": high,
                    "n_pairs": len(values),
                }
            )
    return pd.DataFrame(rows)


def facts_layers(n_layers: int, fractions: Sequence[float]) -> list[int]:
    """Layer indices of the configured fractions of depth (deduplicated, in order)."""
    return list(dict.fromkeys(round(f * (n_layers - 1)) for f in fractions))


def run_facts(loaded, records, settings: SubspaceSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fact-editing experiment at every configured layer: per-pair and summary tables."""
    pairs = known_pairs(loaded, records, settings.facts_pairs)
    if len(pairs) < 2:
        empty = pd.DataFrame(columns=["layer", "measure", "value", "ci_low", "ci_high", "n_pairs"])
        return pd.DataFrame(columns=["layer", "pair"]), empty
    per_pair = pd.concat(
        [
            run_layer(loaded, pairs, layer, settings)
            for layer in facts_layers(loaded.n_layers, settings.facts_layers)
        ],
        ignore_index=True,
    )
    return per_pair, summarize(per_pair, settings)
