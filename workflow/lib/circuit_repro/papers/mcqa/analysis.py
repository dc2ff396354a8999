# (jaxtyping shape strings such as "prompt pos" are not forward references)
"""The multiple-choice circuit of Lieberum et al. (2023), section 3-4, on one model.

- :func:`letter_dla`: direct logit attribution of every component to the correct
  letter's logit minus the mean of the other three letters' (section 3.1), and the
  fewest components carrying most of it.
- :func:`label_attention`: for every head, how much the final position attends to the
  correct option's label and how often that label is its top key ("correct letter"
  heads, section 3.2).
- :func:`compression_curve`: a head's queries and keys projected on their top ``r``
  singular directions (section 4.1): how much of the head's effect on the logit
  difference, and of the task's accuracy, survives at each rank.
- :func:`mutated`, :func:`enumeration_test`: the label mutations and the "Nth item in
  an enumeration" reading of the compressed keys (section 4.2-4.3).
- :func:`analyse`: all of them on one model, the tables of ``results/mcqa/<model>/``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from circuit_repro.engine.dla import direct_logit_attribution, top_share
from circuit_repro.engine.forward import logits_at
from circuit_repro.engine.hooks import Component, ablate, cache_activations
from circuit_repro.engine.lowrank import (
    compressed_logits,
    resid_pre_at,
    singular_basis,
    site_activations,
    site_component,
)
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord

N_OPTIONS = 4

log = logging.getLogger(__name__)


def label_positions(record: TaskRecord) -> list[int]:
    """Token positions of the record's four option labels, in display order."""
    return [record.roles.position(f"LABEL_{i}") for i in range(N_OPTIONS)]


def letter_ids(tokenizer, records: Sequence[TaskRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(answer_ids [prompt], other_ids [prompt, 3])``: the correct letter's token and
    the other three candidates' tokens."""
    answers, others = [], []
    for record in records:
        answers.append(single_token_id(tokenizer, record.answer))
        others.append(
            [single_token_id(tokenizer, c) for c in record.candidates if c != record.answer]
        )
    return torch.tensor(answers), torch.tensor(others)


def prompt_tokens(tokenizer, records: Sequence[TaskRecord]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt tokens and each prompt's read position (its ``END`` role)."""
    batch = tokenizer([r.prompt for r in records], return_tensors="pt", padding=True)
    return batch.input_ids, torch.tensor([r.end for r in records])


def letter_dla(loaded, records: Sequence[TaskRecord], share: float = 0.8):
    """DLA of every component (:func:`~circuit_repro.engine.dla.direct_logit_attribution`)
    to ``logit(correct letter) - mean logit(other letters)``.

    Returns:
        ``(table, per_prompt, total, n_top)``: the DLA table sorted as the graph's
        nodes, per-prompt DLA, the per-prompt logit difference, and how many
        components carry ``share`` of the positive DLA.
    """
    tokens, read = prompt_tokens(loaded.tokenizer, records)
    answers, others = letter_ids(loaded.tokenizer, records)
    table, per_prompt, total = direct_logit_attribution(loaded, tokens, read, answers, others)
    components = table[table["node"] != "direct"]
    return table, per_prompt, total, top_share(components["dla"].tolist(), share)


@torch.no_grad()
def label_attention_per_prompt(
    loaded, records: Sequence[TaskRecord], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(correct, other, top)``, each ``[prompt, layer, head]``: attention from the
    final position to the correct option's label, the mean over the other three labels,
    and whether the correct label is the most-attended key (1.0 or 0.0)."""
    tokens, read = prompt_tokens(loaded.tokenizer, records)
    n_layers, n_heads = loaded.n_layers, loaded.n_heads
    names = [Component("pattern", layer, 0).hook_name for layer in range(n_layers)]
    correct = torch.zeros(len(records), n_layers, n_heads, dtype=torch.float64)
    other = torch.zeros_like(correct)
    top = torch.zeros_like(correct)
    for start in range(0, len(records), batch_size):
        chunk = list(range(start, min(start + batch_size, len(records))))
        with cache_activations(loaded.bridge, names) as store:
            logits_at(loaded, tokens[chunk], read[chunk])
        for row, p in enumerate(chunk):
            labels = label_positions(records[p])
            right = labels[records[p].fields["correct_position"]]
            wrong = [pos for pos in labels if pos != right]
            for layer, name in enumerate(names):
                pattern = store[name][row, :, int(read[p])].double()  # [head, key]
                correct[p, layer] = pattern[:, right]
                other[p, layer] = pattern[:, wrong].mean(-1)
                top[p, layer] = (pattern.argmax(-1) == right).double()
    return correct, other, top


def label_attention(loaded, records: Sequence[TaskRecord], batch_size: int = 16) -> pd.DataFrame:
    """Per head, attention from each prompt's final position to its option labels.

    Returns:
        One row per head: ``correct`` (mean attention to the correct option's label),
        ``other`` (mean over the other three labels), ``top_is_correct`` (share of
        prompts whose most-attended key is the correct label).
    """
    return attention_table(*label_attention_per_prompt(loaded, records, batch_size))


def attention_table(correct, other, top) -> pd.DataFrame:
    """:func:`label_attention`'s table from the per-prompt arrays (no forward pass)."""
    n_layers, n_heads = correct.shape[1:]
    rows = [
        {"layer": layer, "head": head, "correct": float(correct[:, layer, head].mean()),
         "other": float(other[:, layer, head].mean()),
         "top_is_correct": float(top[:, layer, head].mean())}
        for layer in range(n_layers) for head in range(n_heads)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def compression_ranks(d_head: int) -> list[int]:
    """The ranks a compression curve is measured at: every rank up to 8, then powers of
    two, and ``d_head`` (the unmodified head)."""
    ranks = set(range(min(d_head, 8) + 1))
    ranks |= {2**k for k in range(3, d_head.bit_length()) if 2**k < d_head}
    return sorted(ranks | {d_head})


@torch.no_grad()
def compression_curve(
    loaded,
    records: Sequence[TaskRecord],
    layer: int,
    head: int,
    sites: Sequence[str] = ("q", "k"),
    ranks: Sequence[int] | None = None,
) -> pd.DataFrame:
    """How much of one head's effect survives its queries and keys (or ``sites``)
    projected on their top ``r`` singular directions.

    The query basis comes from the final positions, the key and value bases from the
    four label positions; the projection applies at every position. Under grouped-query
    attention keys and values belong to the head's K/V group, so compressing them
    compresses every head of the group. The head's effect
    is the drop in the logit difference when it is zero-ablated; ``kept`` at rank r is
    ``(LD_r - LD_ablated) / (LD_clean - LD_ablated)`` (mean logit differences).

    Returns:
        One row per rank (:func:`compression_ranks` by default): ``rank``, ``logit_diff``,
        ``accuracy``, ``kept``, ``kept_accuracy`` (the same ratio for accuracy);
        ``attrs``: the clean and ablated means, and ``per_prompt`` logit differences
        (keys ``clean``, ``ablated``, ``rank<r>``).
    """
    tokenizer = loaded.tokenizer
    tokens, read = prompt_tokens(tokenizer, records)
    answers, others = letter_ids(tokenizer, records)
    ids = torch.cat([answers[:, None], others], dim=1)  # correct letter first
    where = {
        "q": [[int(r)] for r in read],
        "k": [label_positions(r) for r in records],
        "v": [label_positions(r) for r in records],
    }
    bases = {}
    for site in sites:
        component = site_component(loaded, site, layer, head)
        bases[component] = singular_basis(site_activations(loaded, tokens, component, where[site]))

    per_prompt: dict[str, list[float]] = {}

    def summary(logits: torch.Tensor, key: str) -> tuple[float, float]:
        logits = logits.double()
        diff = logits[:, 0] - logits[:, 1:].mean(1)
        per_prompt[key] = diff.tolist()
        return float(diff.mean()), float((logits.argmax(1) == 0).double().mean())

    clean = summary(logits_at(loaded, tokens, read, token_ids=ids), "clean")
    with ablate(loaded.bridge, [Component("head", layer, head)], "zero"):
        ablated = summary(logits_at(loaded, tokens, read, token_ids=ids), "ablated")
    rows = []
    # Every rank's pass starts at the head's layer: the blocks before it are unchanged.
    entering = resid_pre_at(loaded, tokens, layer)
    for rank in ranks if ranks is not None else compression_ranks(loaded.d_head):
        logits = compressed_logits(loaded, tokens, read, bases, rank, ids, resid_pre=entering)
        diff, accuracy = summary(logits, f"rank{rank}")
        rows.append({"rank": rank, "logit_diff": diff, "accuracy": accuracy,
                     "kept": _kept(diff, clean[0], ablated[0]),
                     "kept_accuracy": _kept(accuracy, clean[1], ablated[1])})  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs.update(clean_logit_diff=clean[0], ablated_logit_diff=ablated[0],
                       clean_accuracy=clean[1], ablated_accuracy=ablated[1],
                       per_prompt=per_prompt)  # fmt: skip
    return table


def _kept(value: float, clean: float, ablated: float) -> float:
    """Share of the head's effect left: 1 = as clean, 0 = as ablated. NaN when ablating
    the head does not lower the measure (no effect to keep a share of)."""
    effect = clean - ablated
    return float((value - ablated) / effect) if effect > 1e-12 else float("nan")


def smallest_rank(curve: pd.DataFrame, share: float = 0.9) -> int | None:
    """The smallest rank keeping at least ``share`` of the head's effect (None: none)."""
    kept = curve[curve["kept"] >= share]
    return int(kept["rank"].min()) if len(kept) else None


#: The label mutations of the MCQA records (Lieberum et al. 2023, section 4.2).
MUTATIONS = ("random_letters", "numbers", "shuffled")


def mutated(record: TaskRecord, name: str) -> TaskRecord:
    """The record with its labels mutated (its counterfactual ``name``) as a record of
    its own: the same question and options in the same order, other labels."""
    counterfactual = record.counterfactual(name)
    fields = dict(record.fields) | {"labels": list(counterfactual.fields["labels"])}
    return replace(
        record,
        prompt=counterfactual.prompt,
        answer=counterfactual.answer,
        wrong_answer=counterfactual.wrong_answer,
        roles=counterfactual.roles,
        candidates=tuple(counterfactual.fields["candidates"]),
        correct=tuple(counterfactual.fields["correct"]),
        counterfactuals={},
        fields=fields,
    )


def explained_variance(points: torch.Tensor, groups: Sequence) -> float:
    """Share of the points' variance explained by their group means (eta squared)."""
    points = points.double()
    centred = points - points.mean(0)
    total = float(centred.pow(2).sum())
    between = 0.0
    for group in dict.fromkeys(groups):
        members = torch.tensor([g == group for g in groups])
        between += float(members.sum()) * float(centred[members].mean(0).pow(2).sum())
    return between / total if total > 0 else float("nan")


@torch.no_grad()
def enumeration_test(
    loaded, records: Sequence[TaskRecord], layer: int, head: int, rank: int = 3
) -> pd.DataFrame:
    """Does the head's low-rank key subspace encode the option's place in the list or
    its label? (the "Nth item in an enumeration" reading, Lieberum et al. 2023, 4.3).

    The key vectors at the four label positions of every prompt, under the clean labels
    and each mutation, projected on the top ``rank`` singular directions of the clean
    keys; the share of their variance explained by the ordinal position (first..fourth)
    and by the label's identity (its text). Under the clean labels the two coincide;
    shuffled and random labels pull them apart.

    Returns:
        One row per labelling (``clean`` and :data:`MUTATIONS`): ``position``,
        ``label`` (shares of variance explained), ``n_keys``; ``attrs["points"]``: every
        projected key (``labels, prompt, position, label, k0..``), for bootstraps.
    """
    component = site_component(loaded, "k", layer, head)
    variants = {"clean": list(records)}
    variants |= {name: [mutated(r, name) for r in records] for name in MUTATIONS}
    keys, positions, labels = {}, {}, {}
    for name, variant in variants.items():
        tokens, _ = prompt_tokens(loaded.tokenizer, variant)
        keys[name] = site_activations(
            loaded, tokens, component, [label_positions(r) for r in variant]
        )
        positions[name] = [i for _ in variant for i in range(N_OPTIONS)]
        labels[name] = [label for r in variant for label in r.fields["labels"]]
    basis = singular_basis(keys["clean"])[:, :rank]
    rows, points = [], []
    for name in variants:
        projected = keys[name] @ basis
        for index, point in enumerate(projected.tolist()):
            points.append({"labels": name, "prompt": index // N_OPTIONS,
                           "position": positions[name][index], "label": labels[name][index],
                           **{f"k{d}": value for d, value in enumerate(point)}})  # fmt: skip
        rows.append({"labels": name, "rank": rank,
                     "position": explained_variance(projected, positions[name]),
                     "label": explained_variance(projected, labels[name]),
                     "n_keys": len(positions[name])})  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs["points"] = points
    return table


def output_node_patching(loaded, records: Sequence[TaskRecord]) -> pd.DataFrame:
    """Activation patching of every head's and every MLP's output at the final position,
    from the label-shuffled prompt into the clean one (Lieberum et al. 2023, section
    3.1: the prompts differ only in which letter is right). The metric is the clean
    answer's logit minus a distractor's, so an output node the answer letter flows
    through lowers it. Prompts are patched in groups of one length, each at its own
    final position; the values are averaged over all prompts.

    Returns:
        One row per component (``kind, layer, index, value``) with ``effect``: the
        clean logit difference minus the patched one (positive: the node carries it).
    """
    from circuit_repro.engine.hooks import all_components
    from circuit_repro.engine.patching import patching_sweep, runs_from_records

    groups: dict[int, list[TaskRecord]] = {}
    for record in records:
        groups.setdefault(record.end, []).append(record)
    tables, clean = [], 0.0
    for end, group in sorted(groups.items()):
        runs, metric = runs_from_records(loaded.tokenizer, group, "shuffled", "corrupt -> clean")
        components = all_components(loaded.bridge, "head", (end,))
        components += all_components(loaded.bridge, "mlp_out", (end,))
        table = patching_sweep(loaded, runs, components, metric, progress=False)
        table["value"] *= len(group)
        tables.append(table[["kind", "layer", "index", "value"]])
        with torch.no_grad():
            logits = logits_at(loaded, runs.base_tokens, runs.read_positions)
        clean += float(metric(logits, torch.arange(len(group))).sum())
    combined = pd.concat(tables).groupby(["kind", "layer", "index"], dropna=False, sort=False)
    table = combined["value"].sum().reset_index()
    table["value"] /= len(records)
    clean /= len(records)
    table["effect"] = clean - table["value"]
    table.attrs["clean_logit_diff"] = clean
    return table


def top_heads(patching: pd.DataFrame, count: int) -> list[tuple[int, int]]:
    """The ``count`` heads whose patching lowers the logit difference most."""
    heads = patching[patching["kind"] == "head"].sort_values("effect", ascending=False)
    return [(int(r.layer), int(r.index)) for r in heads.head(count).itertuples()]


@torch.no_grad()
def letter_accuracy(loaded, records: Sequence[TaskRecord], batch_size: int = 32) -> np.ndarray:
    """Per prompt, whether the correct letter has the largest logit of the candidates."""
    tokens, read = prompt_tokens(loaded.tokenizer, records)
    answers, others = letter_ids(loaded.tokenizer, records)
    ids = torch.cat([answers[:, None], others], dim=1)
    hits = []
    for start in range(0, len(records), batch_size):
        rows = slice(start, start + batch_size)
        logits = logits_at(loaded, tokens[rows], read[rows], token_ids=ids[rows])
        hits.append((logits.argmax(1) == 0).numpy())
    return np.concatenate(hits)


def checkpoint_heads(
    loaded, records: Sequence[TaskRecord], heads: Sequence[tuple[int, int]], step: int
) -> pd.DataFrame:
    """One checkpoint of a post-training series: the task's accuracy and, for each of
    ``heads`` (the final checkpoint's correct-letter heads), its attention to the
    correct label (when do the correct-letter heads appear? Issue: beside the accuracy
    curve)."""
    attention = label_attention(loaded, records).set_index(["layer", "head"])
    accuracy = float(letter_accuracy(loaded, records).mean())
    rows = [
        {"step": step, "layer": layer, "head": head, "accuracy": accuracy,
         **attention.loc[(layer, head)].to_dict()}
        for layer, head in heads
    ]  # fmt: skip
    return pd.DataFrame(rows)


def analyse(
    loaded, records: Sequence[TaskRecord], settings
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every analysis of one model (the result tables of ``results/mcqa/<model>/``).

    Args:
        settings: :class:`~circuit_repro.papers.mcqa.McqaSettings`.

    Returns:
        ``(tables, summary)``: ``dla``, ``patching``, ``attention``, ``compression``,
        ``mutations`` and ``enumeration`` tables, their per-prompt values for the claims
        (``dla_prompts``, ``attention_prompts``, ``compression_prompts``,
        ``enumeration_points``), and a summary (accuracy, logit
        difference, how many components carry the DLA share, the top heads and the
        smallest rank keeping the compression share of each).
    """
    records = list(records[: settings.prompts])
    log.info("direct logit attribution of %d prompts", len(records))
    dla, dla_per_prompt, total, n_top = letter_dla(loaded, records, settings.dla_share)
    log.info("output-node patching of %d prompts", min(len(records), settings.patching_prompts))
    patching = output_node_patching(loaded, records[: settings.patching_prompts])
    heads = top_heads(patching, settings.top_heads)
    log.info("top heads by patching effect: %s", heads)
    correct, other, top = label_attention_per_prompt(loaded, records)
    attention = attention_table(correct, other, top)  # the same passes, not run again
    attention_prompts = pd.DataFrame(
        [{"layer": layer, "head": head, "prompt": p, "correct": float(correct[p, layer, head]),
          "other": float(other[p, layer, head]), "top_is_correct": float(top[p, layer, head])}
         for layer, head in heads for p in range(len(records))]
    )  # fmt: skip
    curves, enumerations, mutations, smallest = [], [], [], {}
    compression_prompts: list[dict] = []
    points: list[dict] = []
    for layer, head in tqdm(heads, desc="compression and enumeration", unit="head"):
        curve = compression_curve(loaded, records, layer, head)
        for key, values in curve.attrs["per_prompt"].items():
            compression_prompts += [{"layer": layer, "head": head, "setting": key, "prompt": p,
                                     "logit_diff": v} for p, v in enumerate(values)]  # fmt: skip
        curve.insert(0, "head", head)
        curve.insert(0, "layer", layer)
        curves.append(curve)
        smallest[f"a{layer}.h{head}"] = smallest_rank(curve, settings.compression_share)
        enumeration = enumeration_test(loaded, records, layer, head, settings.enumeration_rank)
        points += [{"layer": layer, "head": head, **point} for point in enumeration.attrs["points"]]
        enumeration.insert(0, "head", head)
        enumeration.insert(0, "layer", layer)
        enumerations.append(enumeration)
    for name in tqdm(("clean", *MUTATIONS), desc="label mutations", unit="labelling"):
        variant = records if name == "clean" else [mutated(r, name) for r in records]
        table = label_attention(loaded, variant).set_index(["layer", "head"]).loc[heads]
        table = table.reset_index()
        table.insert(0, "labels", name)
        table["accuracy"] = float(letter_accuracy(loaded, variant).mean())
        mutations.append(table)
    tables = {
        "dla": dla,
        "patching": patching,
        "attention": attention,
        "compression": pd.concat(curves, ignore_index=True),
        "mutations": pd.concat(mutations, ignore_index=True),
        "enumeration": pd.concat(enumerations, ignore_index=True),
        # Per prompt, for the claims' bootstraps.
        "dla_prompts": pd.DataFrame(dla_per_prompt.numpy(), columns=list(dla["node"])),
        "attention_prompts": attention_prompts,
        "compression_prompts": pd.DataFrame(compression_prompts),
        "enumeration_points": pd.DataFrame(points),
    }
    hits = letter_accuracy(loaded, records)
    summary = {
        "n_prompts": len(records),
        "accuracy": float(hits.mean()),
        "correct": hits.astype(float).tolist(),  # per prompt, for the claims' gate
        "logit_diff": float(total.mean()),
        "dla_share": settings.dla_share,
        "n_components": int((dla["node"] != "direct").sum()),
        "n_top_components": n_top,
        "top_heads": [f"a{layer}.h{head}" for layer, head in heads],
        "compression_share": settings.compression_share,
        "smallest_rank": smallest,
    }
    return tables, summary
