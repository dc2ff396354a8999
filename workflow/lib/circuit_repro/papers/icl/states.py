"""Steps 1-3 of the ICL circuit read from one clean pass (Cho et al. 2024, §3-4).

:func:`collect` runs the task's prompts once and keeps, per layer, the residual stream
after the block at every forerunner and label token, and the attention weights the
circuit is about (the query's forerunner to each demonstration's label and forerunner,
each label to its own forerunner). Then:

- Step 1, summarise (:func:`probe_forerunners`): does the hidden state at a forerunner
  encode its text's label? A cross-validated linear probe (ridge regression on one-hot
  labels) and the paper's centroid classifier (nearest class mean), layer by layer,
  each against the same probe fit to shuffled labels.
- Step 2, semantics merge (:func:`merge_alignment`): the paper's measure, the kernel
  alignment of the forerunners' hidden states at layer l with their labels' at layer
  l + 1 (overlap of each item's nearest neighbours under cosine similarity, Fig. 5
  left), against random (neighbours / (N - 1)) and against a pairing shuffled among
  demonstrations of the same label: alignment above that control means a label token
  carries its own demonstration's text, not only its class.
- Step 3, retrieve and copy (:func:`count_heads`): heads whose attention reaches
  ``threshold`` times uniform (1 / visible keys): *forerunner-token heads* (a label
  token reads its own forerunner: the copy of step 2, as the authors count them),
  *induction heads* (the query's forerunner reads the demonstrations' labels), *correct
  induction heads* (it reads same-label labels more than other-label ones by that
  margin divided by the number of labels), and *forerunner-retrieval heads* (the
  query's forerunner reads the demonstrations' forerunners).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from circuit_repro.engine.forward import length_batches
from circuit_repro.engine.hooks import with_hooks
from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.papers.icl import HEAD_KINDS
from circuit_repro.papers.icl.edges import demo_count
from circuit_repro.tasks.records import TaskRecord


@dataclass
class ClassStates:
    """What one clean pass over ``n`` prompts of ``k`` demonstrations recorded.

    Attributes:
        forerunners: ``[n, k + 1, layers, d_model]`` residual stream after each block at
            the demonstrations' forerunners and the query's (last).
        labels: ``[n, k, layers, d_model]`` the same at the demonstrations' labels.
        query_to_labels: ``[n, layers, heads, k]`` attention of the query's forerunner
            to each demonstration's label.
        query_to_forerunners: ``[n, layers, heads, k]`` ... to each demonstration's
            forerunner.
        label_to_forerunner: ``[n, layers, heads, k]`` attention of each label token to
            its own forerunner.
        query_position: ``[n]`` the query forerunner's position; ``label_positions``
            ``[n, k]``.
        text_labels: ``[n, k + 1]`` index of each text's label (demonstrations, then the
            query); ``n_labels`` the size of the label set.
    """

    forerunners: np.ndarray
    labels: np.ndarray
    query_to_labels: np.ndarray
    query_to_forerunners: np.ndarray
    label_to_forerunner: np.ndarray
    query_position: np.ndarray
    label_positions: np.ndarray
    text_labels: np.ndarray
    n_labels: int


@torch.no_grad()
def collect(loaded, records: Sequence[TaskRecord], batch_size: int = 16) -> ClassStates:
    """One clean pass over ``records`` (all with the same number of demonstrations)."""
    tokenizer, n_layers = loaded.tokenizer, loaded.n_layers
    k = demo_count(records[0].roles)
    if any(demo_count(r.roles) != k for r in records):
        raise ValueError("all prompts must have the same number of demonstrations")
    label_set = [c.strip() for c in records[0].candidates]
    fore_pos = np.array(
        [[r.roles[f"DEMO_{i}_FORERUNNER"] for i in range(k)] + [r.roles.end] for r in records]
    )
    label_pos = np.array([[r.roles[f"DEMO_{i}_LABEL"] for i in range(k)] for r in records])
    text_labels = np.array(
        [
            [label_set.index(x) for x in r.fields["demo_labels"]]
            + [label_set.index(r.fields["query_label"])]
            for r in records
        ]
    )
    d_model = loaded.hf_model.config.hidden_size
    n_heads = loaded.bridge.cfg.n_heads
    n = len(records)
    forerunners = np.zeros((n, k + 1, n_layers, d_model), dtype=np.float32)
    labels = np.zeros((n, k, n_layers, d_model), dtype=np.float32)
    q_labels = np.zeros((n, n_layers, n_heads, k), dtype=np.float32)
    q_fores = np.zeros((n, n_layers, n_heads, k), dtype=np.float32)
    merge = np.zeros((n, n_layers, n_heads, k), dtype=np.float32)
    encoded = [tokenizer(r.prompt)["input_ids"] for r in records]
    for rows, tokens in length_batches(encoded, batch_size, tokenizer.pad_token_id):
        b = torch.arange(len(rows))[:, None]
        fp, lp = torch.tensor(fore_pos[rows]), torch.tensor(label_pos[rows])
        qp = fp[:, -1]

        def resid(activation, hook, rows=rows, fp=fp, lp=lp, b=b):
            layer = hook.layer()
            forerunners[rows, :, layer] = activation[b, fp].float().cpu().numpy()
            labels[rows, :, layer] = activation[b, lp].float().cpu().numpy()

        def pattern(activation, hook, rows=rows, fp=fp, lp=lp, qp=qp, b=b):
            layer = hook.layer()  # activation: [batch, head, query, key]
            at_query = activation[b[:, 0], :, qp]  # [batch, head, key]
            q_labels[rows, layer] = at_query[b, :, lp].permute(0, 2, 1).float().cpu().numpy()
            q_fores[rows, layer] = at_query[b, :, fp[:, :-1]].permute(0, 2, 1).float().cpu().numpy()
            own = activation[b, :, lp, fp[:, :-1]]  # [batch, k, head]
            merge[rows, layer] = own.permute(0, 2, 1).float().cpu().numpy()

        hooks = [(f"blocks.{layer}.hook_resid_post", resid) for layer in range(n_layers)]
        hooks += [(f"blocks.{layer}.attn.hook_pattern", pattern) for layer in range(n_layers)]
        with with_hooks(loaded.bridge, hooks):
            loaded.hf_model.base_model(input_ids=tokens.to(loaded.hf_model.device), use_cache=False)
    return ClassStates(
        forerunners=forerunners,
        labels=labels,
        query_to_labels=q_labels,
        query_to_forerunners=q_fores,
        label_to_forerunner=merge,
        query_position=fore_pos[:, -1],
        label_positions=label_pos,
        text_labels=text_labels,
        n_labels=len(label_set),
    )


# ------------------------------------------------------------------ step 1: probes


def _ridge_predict(train_x, train_y, test_x, n_labels: int, ridge: float) -> np.ndarray:
    """Ridge regression on one-hot labels (features centred on the training mean);
    the penalty is ``ridge`` times the mean eigenvalue of the training Gram matrix."""
    mean = train_x.mean(0)
    x = train_x - mean
    onehot = np.eye(n_labels)[train_y]
    target = onehot - onehot.mean(0)
    if x.shape[0] < x.shape[1]:  # dual form: an n x n system instead of d x d
        gram = x @ x.T
        penalty = ridge * np.trace(gram) / gram.shape[0]
        alpha = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), target)
        weights = x.T @ alpha
    else:
        gram = x.T @ x
        penalty = ridge * np.trace(gram) / gram.shape[0]
        weights = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), x.T @ target)
    return ((test_x - mean) @ weights).argmax(1)


def _centroid_predict(train_x, train_y, test_x, n_labels: int) -> np.ndarray:
    """Nearest class mean in Euclidean distance (the paper's centroid classifier)."""
    centroids = np.stack(
        [
            train_x[train_y == c].mean(0)
            if (train_y == c).any()
            else np.full(train_x.shape[1], np.inf)
            for c in range(n_labels)
        ]
    )
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
    return distances.argmin(1)


def cross_validated_hits(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    n_labels: int,
    folds: int,
    ridge: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per-item correctness ``{method: [items]}`` of the linear and centroid probes, each
    fit on the other folds (items of one group, a prompt, share a fold); ``*_shuffled``
    are the same probes fit to and scored on labels permuted across items (seeded)."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    fold_of_group = dict(zip(rng.permutation(unique), np.arange(len(unique)) % folds, strict=True))
    fold = np.array([fold_of_group[g] for g in groups])
    shuffled = rng.permutation(y)
    out = {}
    for name, labels in (("", y), ("_shuffled", shuffled)):
        linear = np.zeros(len(y), dtype=bool)
        centroid = np.zeros(len(y), dtype=bool)
        for f in range(folds):
            test, train = fold == f, fold != f
            if not test.any() or not train.any():
                continue
            x64 = x.astype(np.float64)
            linear[test] = (
                _ridge_predict(x64[train], labels[train], x64[test], n_labels, ridge)
                == labels[test]
            )
            centroid[test] = (
                _centroid_predict(x64[train], labels[train], x64[test], n_labels) == labels[test]
            )
        out[f"linear{name}"] = linear
        out[f"centroid{name}"] = centroid
    return out


PROBE_METHODS = ("linear", "centroid", "linear_shuffled", "centroid_shuffled")


def probe_forerunners(
    states: ClassStates,
    folds: int,
    ridge: float,
    seed: int,
    bootstrap_samples: int,
    confidence: float,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Step 1: probe accuracy at the forerunners (demonstrations' and query's), per layer.

    Returns:
        A table (``layer``, ``method``, ``accuracy``, ``ci_low``, ``ci_high``,
        ``chance``; CIs over prompts) and the per-prompt accuracies
        ``[prompts, layers, methods]`` (in :data:`PROBE_METHODS` order) for contrasts.
    """
    n, positions, n_layers, _ = states.forerunners.shape
    groups = np.repeat(np.arange(n), positions)
    y = states.text_labels.reshape(-1)
    per_prompt = np.zeros((n, n_layers, len(PROBE_METHODS)))
    for layer in range(n_layers):
        x = states.forerunners[:, :, layer].reshape(n * positions, -1)
        hits = cross_validated_hits(x, y, groups, states.n_labels, folds, ridge, seed)
        for m, method in enumerate(PROBE_METHODS):
            per_prompt[:, layer, m] = hits[method].reshape(n, positions).mean(1)
    samples = bootstrap(lambda rows: per_prompt[rows].mean(0), [n], bootstrap_samples, seed)
    rows = []
    for layer in range(n_layers):
        for m, method in enumerate(PROBE_METHODS):
            low, high = percentile_interval(samples[:, layer, m], confidence)
            rows.append(
                {
                    "layer": layer,
                    "method": method,
                    "accuracy": float(per_prompt[:, layer, m].mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "chance": 1 / states.n_labels,
                }
            )
    return pd.DataFrame(rows), per_prompt


# --------------------------------------------------------- step 2: semantics merge


def _neighbours(features: np.ndarray, count: int) -> np.ndarray:
    """Indices of each row's ``count`` most cosine-similar other rows, ``[N, count]``."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :count]


def kernel_alignment(a: np.ndarray, b: np.ndarray, count: int) -> np.ndarray:
    """Per-item overlap of the ``count`` nearest neighbours under ``a`` and under ``b``
    (rows are the same items), as a fraction of ``count`` (the paper's kernel
    alignment); random features give about ``count / (N - 1)``."""
    near_a, near_b = _neighbours(a, count), _neighbours(b, count)
    return np.array(
        [
            len(np.intersect1d(x, y, assume_unique=True)) / count
            for x, y in zip(near_a, near_b, strict=True)
        ]
    )


def merge_alignment(
    states: ClassStates,
    neighbours: int,
    seed: int,
    bootstrap_samples: int,
    confidence: float,
) -> pd.DataFrame:
    """Step 2: kernel alignment of forerunners at layer l with their labels at l + 1.

    ``pairing`` is ``own`` (each forerunner with its own label token) or
    ``same_label_shuffled`` (with the label token of another demonstration of the same
    label, drawn per item, seeded). CIs over prompts.
    """
    n, k, n_layers, _ = states.labels.shape
    items = n * k
    count = max(1, min(neighbours, items // 8))
    demo_labels = states.text_labels[:, :k].reshape(-1)
    rng = np.random.default_rng(seed)
    partner = np.arange(items)
    for label in np.unique(demo_labels):
        members = np.flatnonzero(demo_labels == label)
        partner[members] = rng.permutation(members)
    rows = []
    for layer in range(n_layers - 1):
        fore = states.forerunners[:, :k, layer].reshape(items, -1)
        label_states = states.labels[:, :, layer + 1].reshape(items, -1)
        for pairing, paired in (
            ("own", label_states),
            ("same_label_shuffled", label_states[partner]),
        ):
            per_item = kernel_alignment(fore, paired, count).reshape(n, k).mean(1)
            samples = bootstrap(lambda r, v=per_item: v[r].mean(), [n], bootstrap_samples, seed)
            low, high = percentile_interval(samples, confidence)
            rows.append(
                {
                    "layer": layer,
                    "pairing": pairing,
                    "alignment": float(per_item.mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "baseline": count / (items - 1),
                    "neighbours": count,
                }
            )
    return pd.DataFrame(rows)


# ----------------------------------------------------------- step 3: head counts


def head_scores(states: ClassStates, threshold: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{kind: (score, bar)}``, each ``[units, layers, heads]`` with units = prompts
    (or prompt x demonstration for forerunner-token heads): a head counts where
    ``score >= bar``. Uniform attention is 1 / the number of keys the query sees."""
    n, n_layers, n_heads, k = states.query_to_labels.shape
    visible = (states.query_position + 1)[:, None, None]
    same = states.text_labels[:, :k] == states.text_labels[:, -1:]  # [n, k]
    same_mass = (states.query_to_labels * same[:, None, None]).sum(-1)
    other_mass = (states.query_to_labels * ~same[:, None, None]).sum(-1)
    label_visible = (states.label_positions + 1).T  # [k, n], demonstration-major
    merge = states.label_to_forerunner.transpose(3, 0, 1, 2).reshape(k * n, n_layers, n_heads)
    merge_bar = np.broadcast_to(
        threshold / label_visible.reshape(k * n)[:, None, None], merge.shape
    )
    query_bar = np.broadcast_to(threshold * k / visible, (n, n_layers, n_heads))
    return {
        "forerunner_token": (merge, merge_bar),
        "induction": (states.query_to_labels.sum(-1), query_bar),
        "correct_induction": (same_mass - other_mass, query_bar / states.n_labels),
        "forerunner_retrieval": (states.query_to_forerunners.sum(-1), query_bar),
    }


def count_heads(
    states: ClassStates,
    threshold: float,
    seed: int,
    bootstrap_samples: int,
    confidence: float,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Step 3 (and step 2's copy heads): which heads count, and how many per layer.

    Returns:
        ``heads``: per kind, layer and head: ``frequency`` (share of prompts, or of
        demonstrations for forerunner-token heads, where it counts), ``mean_score``
        and ``mean_bar``; for every head also ``same_label_attention`` and
        ``other_label_attention`` (the query forerunner's attention per same-label and
        per other-label demonstration label, averaged over prompts that have both);
        ``counts``: per kind and layer the mean number of heads counted per prompt
        with a CI over prompts; and per kind the counts ``[prompts, layers]``.
    """
    n, n_layers, n_heads, k = states.query_to_labels.shape
    scores = head_scores(states, threshold)
    same_per, other_per, both = label_attention(states)
    head_rows, count_rows, per_prompt_counts = [], [], {}
    for kind in HEAD_KINDS:
        score, bar = scores[kind]
        passes = score >= bar  # [units, layers, heads]
        counts = passes.sum(-1).astype(float)  # [units, layers]
        if kind == "forerunner_token":  # units are demonstration-major: [k * n]
            counts = counts.reshape(k, n, n_layers).mean(0)
        per_prompt_counts[kind] = counts
        samples = bootstrap(lambda r, c=counts: c[r].mean(0), [n], bootstrap_samples, seed)
        for layer in range(n_layers):
            low, high = percentile_interval(samples[:, layer], confidence)
            count_rows.append(
                {
                    "kind": kind,
                    "layer": layer,
                    "mean_count": float(counts[:, layer].mean()),
                    "ci_low": low,
                    "ci_high": high,
                    "heads_per_layer": n_heads,
                }
            )
            for head in range(n_heads):
                head_rows.append(
                    {
                        "kind": kind,
                        "layer": layer,
                        "head": head,
                        "frequency": float(passes[:, layer, head].mean()),
                        "mean_score": float(score[:, layer, head].mean()),
                        "mean_bar": float(bar[:, layer, head].mean()),
                        "same_label_attention": float(same_per[both, layer, head].mean())
                        if both.any()
                        else float("nan"),
                        "other_label_attention": float(other_per[both, layer, head].mean())
                        if both.any()
                        else float("nan"),
                    }
                )
    return pd.DataFrame(head_rows), pd.DataFrame(count_rows), per_prompt_counts


def label_attention(states: ClassStates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The query forerunner's attention per same-label and per other-label demonstration
    label, ``[prompts, layers, heads]`` each, and which prompts have both kinds of
    demonstration (``[prompts]``; elsewhere the missing kind reads 0)."""
    k = states.query_to_labels.shape[-1]
    same = states.text_labels[:, :k] == states.text_labels[:, -1:]
    n_same = np.maximum(same.sum(1), 1)[:, None, None]
    n_other = np.maximum((~same).sum(1), 1)[:, None, None]
    same_per = (states.query_to_labels * same[:, None, None]).sum(-1) / n_same
    other_per = (states.query_to_labels * ~same[:, None, None]).sum(-1) / n_other
    return same_per, other_per, same.any(1) & (~same).any(1)


def label_preference(states: ClassStates, heads: pd.DataFrame) -> np.ndarray:
    """Per prompt (with both same- and other-label demonstrations), the induction heads'
    attention per same-label demonstration label minus per other-label one, averaged
    over the heads that count as induction heads in at least half of the prompts."""
    chosen = heads[(heads["kind"] == "induction") & (heads["frequency"] >= 0.5)]
    if chosen.empty:
        return np.empty(0)
    same_per, other_per, both = label_attention(states)
    layers, indices = chosen["layer"].to_numpy(), chosen["head"].to_numpy()
    return (same_per[:, layers, indices] - other_per[:, layers, indices])[both].mean(1)


def depth_centre(counts: np.ndarray) -> float:
    """Centre of mass of mean counts over layers, as a fraction of depth (0 = first
    layer, 1 = last); NaN when nothing counts."""
    mean = counts.mean(0)
    if mean.sum() == 0:
        return float("nan")
    return float((mean * np.arange(len(mean))).sum() / mean.sum() / max(1, len(mean) - 1))
