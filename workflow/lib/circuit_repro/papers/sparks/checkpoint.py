"""One checkpoint of a series: its EAP-IG circuit and head importances, its head-type
scores and its task accuracy (Park, Jeong and Kang 2025, section 2 and appendix A).

- Circuit: EAP-IG (:func:`~circuit_repro.engine.edges.edge_attribution`) of every edge
  between the clean task prompts and their counterfactual with the option labels
  shuffled (the answer letter changes, nothing else), scored by the KL divergence from
  the clean next-token distribution, as the paper scores by KL. The top share of edges
  by ``|score|`` is kept and pruned to the nodes on a path from the input to the
  logits (the paper removes isolated nodes).
- Head importance ``I``: the summed ``|score|`` of the circuit's edges leaving a head,
  normalised over heads to sum to 1 (the paper's Eq. 6-7).
- Head types: induction, previous-token and duplicate-token scores on repeated random
  sequences (:func:`~circuit_repro.engine.attention.repeated_sequence_scores`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.attention import HEAD_TYPES, repeated_sequence_scores
from circuit_repro.engine.edges import Graph, edge_attribution
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import query_heads_of_group
from circuit_repro.engine.metrics import KLDivergenceMetric
from circuit_repro.engine.patching import PatchingRuns, runs_from_records
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord

#: The counterfactual a circuit is found against: the same question and options with
#: the labels permuted so that every label moves (the answer letter changes).
COUNTERFACTUAL = "shuffled"

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")


def task_runs(tokenizer, records: Sequence[TaskRecord]) -> tuple[PatchingRuns, torch.Tensor]:
    """Clean prompts as the base, label-shuffled ones as the source (right-padded to one
    length; a prompt and its shuffle tokenize alike, the labels being single tokens),
    and the candidates' token ids ``[prompt, 4]``."""
    runs, _ = runs_from_records(tokenizer, records, COUNTERFACTUAL, "corrupt -> clean")
    ids = torch.tensor([[single_token_id(tokenizer, c) for c in r.candidates] for r in records])
    return runs, ids


@torch.no_grad()
def task_accuracy(loaded, records: Sequence[TaskRecord], batch_size: int = 32) -> np.ndarray:
    """Per prompt, whether the answer's letter has the largest logit of the four."""
    tokenizer = loaded.tokenizer
    runs, ids = task_runs(tokenizer, records)
    hits = []
    for start in range(0, runs.n_prompts, batch_size):
        rows = slice(start, start + batch_size)
        logits = logits_at(loaded, runs.base_tokens[rows], runs.read_positions[rows])
        chosen = logits.gather(1, ids[rows]).argmax(1)
        correct = torch.tensor([list(r.candidates).index(r.answer) for r in records[rows]])
        hits.append((chosen == correct).numpy())
    return np.concatenate(hits)


def head_of(node: str) -> tuple[int, int] | None:
    """``(layer, head)`` of a graph node named ``a{L}.h{H}``; None for other nodes."""
    match = _HEAD.match(node)
    return (int(match.group(1)), int(match.group(2))) if match else None


def reads_into(loaded) -> dict[str, list[str]]:
    """For every downstream node name of the model's graph, the upstream node(s) that
    its input feeds: a head's query input feeds that head, a K/V group's input the
    query heads of the group, an MLP's input that MLP, the logits the logits."""
    graph = Graph.from_model(loaded)
    n_heads, n_kv = loaded.n_heads, loaded.n_kv_heads
    out: dict[str, list[str]] = {}
    for node in graph.downstream:
        if node.kind == "kv":
            heads = query_heads_of_group(node.index, n_heads, n_kv)
            out[node.name] = [f"a{node.layer}.h{h}" for h in heads]
        elif node.kind == "head":
            out[node.name] = [f"a{node.layer}.h{node.index}"]
        else:
            out[node.name] = [node.name]
    return out


def prune_to_paths(
    edges: Sequence[tuple[str, str]], feeds: dict[str, list[str]]
) -> list[tuple[str, str]]:
    """The edges on a path from ``input`` to ``logits`` through the given edges (a node
    the input cannot reach, or that cannot reach the logits, computes nothing the
    circuit's output sees). ``feeds`` maps a downstream name to the upstream nodes its
    input feeds (:func:`reads_into`)."""
    forward: dict[str, set[str]] = {}
    backward: dict[str, set[str]] = {}
    for up, down in edges:
        for node in feeds.get(down, [down]):
            forward.setdefault(up, set()).add(node)
            backward.setdefault(node, set()).add(up)

    def reach(start: str, graph: dict[str, set[str]]) -> set[str]:
        seen, stack = {start}, [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    on_path = reach("input", forward) & reach("logits", backward)
    return [
        (up, down)
        for up, down in edges
        if up in on_path and any(node in on_path for node in feeds.get(down, [down]))
    ]


def circuit_heads(
    upstream: Sequence[str],
    downstream: Sequence[str],
    scores: np.ndarray,
    n_edges: int,
    share: float,
    feeds: dict[str, list[str]],
) -> dict[tuple[int, int], float]:
    """The heads of the circuit made of the top ``share`` of the graph's ``n_edges``
    edges by ``|score|`` (``scores`` may list only the candidates), pruned to
    input-to-logits paths, with their importance (summed ``|score|`` of their circuit
    edges out, normalised to sum to 1 over the circuit's heads)."""
    k = min(len(scores), max(1, round(share * n_edges)))
    keep = np.argpartition(-np.abs(scores), k - 1)[:k]
    kept = prune_to_paths([(upstream[i], downstream[i]) for i in keep], feeds)
    kept_set = set(kept)
    importance: dict[tuple[int, int], float] = {}
    for i in keep:
        head = head_of(upstream[i])
        if head is not None and (upstream[i], downstream[i]) in kept_set:
            importance[head] = importance.get(head, 0.0) + abs(float(scores[i]))
    total = sum(importance.values())
    return {h: v / total for h, v in importance.items()} if total > 0 else importance


#: Share of the graph's edges kept per checkpoint as circuit candidates (by |score|):
#: every circuit the series step builds (``circuit_edges``, at most a third of this,
#: and its bootstrap resamples) is drawn from them.
CANDIDATE_SHARE = 0.15


def circuit_scores(loaded, records: Sequence[TaskRecord], ig_steps: int):
    """EAP-IG of every edge on ``records`` and what is kept of it for circuits.

    Returns:
        ``(edges, shares)``: the candidate edges (``upstream, downstream, score,
        n_edges``: the :data:`CANDIDATE_SHARE` of edges with the largest ``|score|``)
        and each prompt's share of their scores ``[prompt, edge]``.
    """
    runs, _ = task_runs(loaded.tokenizer, records)
    with torch.no_grad():
        reference = logits_at(loaded, runs.base_tokens, runs.read_positions)
    metric = KLDivergenceMetric(reference)
    table, shares = edge_attribution(
        loaded, runs, metric, "eap-ig", steps=ig_steps, batch_size=8, per_prompt=True
    )
    n_keep = min(len(table), max(1, round(CANDIDATE_SHARE * len(table))))
    order = np.argsort(-np.abs(table["score"].to_numpy()), kind="stable")[:n_keep]
    edges = table.iloc[order][["upstream", "downstream", "score"]].reset_index(drop=True)
    edges["n_edges"] = len(table)
    return edges, shares[:, order].astype(np.float32)


def head_type_table(scores: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per head, its mean head-type scores over the prompts of
    :func:`~circuit_repro.engine.attention.repeated_sequence_scores`."""
    n_layers, n_heads = scores[HEAD_TYPES[0]].shape[1:]
    rows = [
        {"layer": layer, "head": head,
         **{name: float(scores[name][:, layer, head].mean()) for name in HEAD_TYPES}}
        for layer in range(n_layers)
        for head in range(n_heads)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def repeated_tokens(vocab: Sequence[int], n: int, period: int, seed: int, bos: int | None):
    """``n`` random sequences of ``period`` tokens written twice (after ``bos``), seeded."""
    rng = np.random.default_rng([seed, 7])
    first = np.asarray(vocab)[rng.integers(len(vocab), size=(n, period))]
    rows = np.concatenate([first, first], axis=1)
    if bos is not None:
        rows = np.concatenate([np.full((n, 1), bos), rows], axis=1)
    return torch.from_numpy(rows).long()


@torch.no_grad()
def repeat_losses(loaded, tokens: torch.Tensor, period: int) -> dict[str, np.ndarray]:
    """Per sequence, the mean next-token loss on its first copy and on its repeat, and
    the share of the repeat's tokens predicted (top-1)."""
    logits = loaded.hf_model(input_ids=tokens).logits.double()
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(2, tokens[:, 1:, None])[..., 0]
    first = tokens.shape[1] - 2 * period  # the BOS, if any
    # logprobs[:, t] scores token t + 1: the first copy's later tokens, then the repeat's.
    top1 = logits[:, :-1].argmax(-1) == tokens[:, 1:]
    return {
        "loss_first": (-logprobs[:, first : first + period - 1].mean(1)).numpy(),
        "loss_repeat": (-logprobs[:, first + period - 1 :].mean(1)).numpy(),
        "accuracy_repeat": top1[:, first + period - 1 :].double().mean(1).numpy(),
    }


def analyse_checkpoint(loaded, entry, records: Sequence[TaskRecord] | None, settings):
    """Everything one checkpoint contributes to its series.

    Args:
        loaded: The checkpoint, with a bridge.
        entry: Its registry entry (``training.recipe`` says what the series learns).
        records: The post-training task's prompts (None for a series trained from
            scratch on the induction recipe, which has no such task).
        settings: :class:`~circuit_repro.papers.sparks.SparksSettings`.

    Returns:
        ``(heads, edges, shares, summary)``: per head its type scores; the circuit's
        candidate edges and their per-prompt shares (empty without a task; the
        series step builds the circuits from them); and ``step``, accuracy, losses,
        ``per_prompt`` induction scores ``[prompt][layer * n_heads + head]`` and
        repeat losses, and (with a task) the graph's wiring ``feeds``
        (:func:`reads_into`).
    """
    from circuit_repro.engine.recipes import FIRST_RANDOM_TOKEN

    period = settings.head_type_length
    training = entry.get("training", {})
    # A model trained on the induction recipe is probed on the tokens it was trained on.
    n_tokens = training.get("vocab_size", 200) if training.get("recipe") == "induction" else 200
    vocab = range(FIRST_RANDOM_TOKEN, FIRST_RANDOM_TOKEN + n_tokens)
    tokens = repeated_tokens(vocab, settings.head_type_prompts, period, settings.seed,
                             loaded.tokenizer.bos_token_id)  # fmt: skip
    scores = repeated_sequence_scores(loaded, tokens, period)
    heads = head_type_table(scores)
    losses = repeat_losses(loaded, tokens, period)
    summary = {"step": entry.get("step", 0), "checkpoint": entry.get("checkpoint", ""),
               "repeated_vocab": n_tokens}  # fmt: skip
    summary |= {name: float(values.mean()) for name, values in losses.items()}
    # Per prompt, for the series' bootstrap of the emergence steps.
    summary["per_prompt"] = {
        # Match-and-copy at the best shift (see repeated_sequence_scores): in a model
        # whose earlier heads carry the token a few places back, the copying head
        # attends that many places past the previous occurrence.
        "induction": scores["shifted_induction"].flatten(1).tolist(),
        "loss_first": losses["loss_first"].tolist(),
        "loss_repeat": losses["loss_repeat"].tolist(),
        "accuracy_repeat": losses["accuracy_repeat"].tolist(),
    }
    edges = pd.DataFrame(columns=["upstream", "downstream", "score", "n_edges"])
    shares = np.zeros((0, 0), dtype=np.float32)
    if records is not None:
        hits = task_accuracy(loaded, records)
        summary |= {"accuracy": float(hits.mean()), "n_prompts": len(hits)}
        summary["per_prompt"]["correct"] = hits.tolist()
        circuit_records = list(records[: settings.circuit_prompts])
        edges, shares = circuit_scores(loaded, circuit_records, settings.ig_steps)
        summary["feeds"] = reads_into(loaded)  # the graph's wiring, to prune circuits
    return heads, edges, shares, summary
