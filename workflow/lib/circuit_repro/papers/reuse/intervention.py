"""The attention intervention of Merullo et al. (2023, §5) on Colored Objects, with controls.

The paper repairs GPT-2 medium's Colored Objects errors by making the heads that
inhibit the repeated name on IOI (inhibition heads) and the negative mover attend on
Colored Objects the way they would on IOI. Our reading of "IOI-like", per head class:

- an inhibition head attends, from the final position, uniformly to the incorrect
  colours, as on IOI it attends to the name that must not be copied (S2);
- a negative mover attends to the correct colour, as on IOI negative name movers
  attend to the indirect object, the name they write against (Wang et al. 2022, §3;
  ``reuse.negative_mover_target: wrong_answers`` gives it the inhibition heads'
  target instead, and both are reported).

Forcing attention onto the answer options could help whichever heads are forced, so
every group is compared with size-matched random head sets forced the same way
(:func:`random_controls`; drawn from the group's layers, and from anywhere). Each
head is also intervened on alone and compared with its path-patching effect, per
path-patching stage (:func:`per_head_intervention`, :func:`correlations`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from circuit_repro.engine.circuits import random_head_sets
from circuit_repro.engine.forward import (
    PrefixCache,
    logits_at,
    prefix_reuse_supported,
    start_at_layer,
)
from circuit_repro.engine.hooks import override_attention_rows, with_hooks
from circuit_repro.engine.metrics import LogitDiffMetric
from circuit_repro.engine.stats import bootstrap, bootstrap_ci, percentile_interval
from circuit_repro.papers.reuse import TARGET_TASK, ReuseSettings
from circuit_repro.papers.reuse.circuit import Head, circuit_heads, head_classes, stage_effects
from circuit_repro.papers.reuse.roles import task_roles
from circuit_repro.tasks.base import single_token_id
from circuit_repro.tasks.records import TaskRecord

#: Attention targets of the intervention: the wrong answers' tokens or the answer's.
TARGETS = ("wrong_answers", "answer")

#: A head and the target it is made to attend to.
Forced = tuple[Head, str]

#: Random-head samplers of the controls (see engine.circuits.random_head_sets).
SAMPLERS = ("layer", "any")

#: The quantile of the random gains the circuit's gain must exceed.
RANDOM_QUANTILE = 0.95


@dataclass
class InterventionRuns:
    """Prompts prepared for attention interventions at the final position.

    The intervention changes nothing before a prompt's final position, so with a cache
    of the clean run's keys and values (``prefix``) only the final positions are
    computed, one pass per final position shared by several prompts (``by_end``).
    Without one (``prefix=None``, an architecture where a suffix run does not
    reproduce a full run) every position is computed.
    """

    tokens: Int[torch.Tensor, "prompt pos"]
    end: Int[torch.Tensor, " prompt"]  # absolute final positions
    targets: dict[str, Float[torch.Tensor, "prompt pos"]]  # target -> attention weights
    candidate_ids: list[list[int]]
    correct_index: Int[torch.Tensor, " prompt"]  # index of the correct candidate
    answer_ids: Int[torch.Tensor, " prompt"]
    wrong_ids: Int[torch.Tensor, " prompt"]
    prefix: PrefixCache | None
    #: ``[layer, prompt, d_model]``: the clean run's residual stream entering each layer
    #: at each prompt's final position (with ``prefix``), so that a run can start at the
    #: first forced layer: nothing before it changes.
    final_resid: Float[torch.Tensor, "layer prompt d_model"] | None = None

    @property
    def n_prompts(self) -> int:
        return len(self.end)

    @property
    def by_end(self) -> list[tuple[int, Int[torch.Tensor, " prompt"]]]:
        """``(final position, prompts ending there)`` in order of position."""
        return [(int(end), torch.nonzero(self.end == end)[:, 0]) for end in self.end.unique()]


def _uniform_over(shape: torch.Size, positions: Sequence[list[int]]) -> torch.Tensor:
    weights = torch.zeros(shape, dtype=torch.float32)
    for row, targets in enumerate(positions):
        weights[row, targets] = 1.0 / len(targets)
    return weights


def prepare_intervention(
    loaded, records: Sequence[TaskRecord], task: str = TARGET_TASK
) -> InterventionRuns:
    """Tokens, target attention (uniform over the wrong answers, or on the answer) and
    answer ids."""
    roles = task_roles(task)
    if roles.wrong_answers is None:
        raise ValueError(f"task {task!r} defines no wrong-answer tokens to attend to")
    tokenizer = loaded.tokenizer
    encoded = tokenizer([r.prompt for r in records], return_tensors="pt", padding=True)
    tokens = encoded.input_ids
    end = torch.tensor([r.end for r in records])
    targets = {
        "wrong_answers": _uniform_over(tokens.shape, [roles.wrong_answers(r) for r in records]),
        "answer": _uniform_over(tokens.shape, [roles.answer(r) for r in records]),
    }
    candidate_ids = [[single_token_id(tokenizer, c) for c in r.candidates] for r in records]
    correct_index = torch.tensor([list(r.candidates).index(r.answer) for r in records])
    prefix, final_resid = None, None
    if int(end.min()) > 0 and prefix_reuse_supported(loaded, tokens, end):
        final_resid = torch.empty(loaded.n_layers, len(records), loaded.bridge.cfg.d_model)

        def keep_final(layer: int):
            def hook(resid, hook):
                final_resid[layer] = resid[torch.arange(len(records)), end].detach()

            return hook

        names = [
            (f"blocks.{layer}.hook_resid_pre", keep_final(layer))
            for layer in range(loaded.n_layers)
        ]
        with torch.no_grad(), with_hooks(loaded.bridge, names):
            prefix = PrefixCache(loaded, tokens)
    return InterventionRuns(
        tokens=tokens,
        end=end,
        targets=targets,
        candidate_ids=candidate_ids,
        correct_index=correct_index,
        answer_ids=torch.tensor([single_token_id(tokenizer, r.answer) for r in records]),
        wrong_ids=torch.tensor([single_token_id(tokenizer, r.wrong_answer) for r in records]),
        prefix=prefix,
        final_resid=final_resid,
    )


def _forced_logits(
    loaded,
    runs: InterventionRuns,
    by_site: Mapping[tuple[int, str], list[int]],
    prompts: Int[torch.Tensor, " prompt"],
    start: int,
    query: Int[torch.Tensor, " prompt"],
    cache,
    first_layer: int = 0,
) -> Float[torch.Tensor, "prompt vocab"]:
    """Logits at ``query`` (counted from ``start``) of ``prompts``, run from ``start``
    with ``cache`` holding the positions before it, the forced heads overridden; from
    block ``first_layer`` on when the run is one final position per prompt."""
    n_keys = int(query.max()) + start + 1
    with contextlib.ExitStack() as stack:
        if first_layer > 0:
            resid = runs.final_resid[first_layer, prompts][:, None]
            stack.enter_context(start_at_layer(loaded.bridge, first_layer, resid))
        for (layer, target), heads in by_site.items():
            # Keys span the cached prefix too.
            weights = runs.targets[target][prompts, :n_keys]
            stack.enter_context(
                override_attention_rows(loaded.bridge, layer, heads, query, weights)
            )
        tokens = runs.tokens[prompts, start:n_keys]
        return logits_at(loaded, tokens, query, None, cache)


@torch.no_grad()
def intervene(loaded, runs: InterventionRuns, forced: Sequence[Forced]) -> pd.DataFrame:
    """Per-prompt accuracy and LD with each forced head attending to its target at the
    final position.

    Each listed head's attention from the final token is replaced by its target's
    weights (``wrong_answers``: uniform over the other colours; ``answer``: the correct
    colour). ``forced=[]`` gives the unmodified model.

    Returns:
        One row per prompt: ``correct`` (the arg-max over the candidates is the answer)
        and ``logit_diff`` (answer - main wrong answer).
    """
    by_site: dict[tuple[int, str], list[int]] = {}
    for (layer, head), target in forced:
        if target not in runs.targets:
            raise ValueError(f"unknown attention target {target!r}; choose one of {TARGETS}")
        by_site.setdefault((layer, target), []).append(head)
    if runs.prefix is None:
        everyone = torch.arange(runs.n_prompts)
        logits = _forced_logits(loaded, runs, by_site, everyone, 0, runs.end, None)
    else:
        # Blocks before the first forced head see nothing forced: start there.
        first_layer = min((layer for layer, _ in by_site), default=0)
        logits = None
        for end, prompts in runs.by_end:
            cache = runs.prefix.prefix(end, 1, prompts, first_layer)
            query = torch.zeros(len(prompts), dtype=torch.long)
            group = _forced_logits(loaded, runs, by_site, prompts, end, query, cache, first_layer)
            if logits is None:
                logits = group.new_empty(runs.n_prompts, group.shape[1])
            logits[prompts] = group
    chosen = torch.stack([logits[row, ids].argmax() for row, ids in enumerate(runs.candidate_ids)])
    metric = LogitDiffMetric(runs.answer_ids, runs.wrong_ids)
    ld = metric(logits, torch.arange(runs.n_prompts))
    return pd.DataFrame(
        {"correct": (chosen == runs.correct_index).numpy(), "logit_diff": ld.double().numpy()}
    )


def intervention_groups(
    classes: pd.DataFrame, circuit: set[Head], negative_mover_target: str = "answer"
) -> dict[str, list[Forced]]:
    """The paper's head groups, taken from the IOI circuit: its inhibition heads (to the
    wrong answers), its negative movers (to ``negative_mover_target``), and both."""
    lookup = head_classes(classes)
    inhibition = [(h, "wrong_answers") for h in sorted(circuit) if lookup.get(h) == "inhibition"]
    negative = [
        (h, negative_mover_target) for h in sorted(circuit) if lookup.get(h) == "negative mover"
    ]
    return {"inhibition": inhibition, "negative mover": negative, "all": inhibition + negative}


def _heads_text(forced: Sequence[Forced]) -> str:
    return " ".join(f"L{layer}H{head}" for (layer, head), _ in forced)


def random_controls(
    loaded,
    runs: InterventionRuns,
    groups: Mapping[str, Sequence[Forced]],
    settings: ReuseSettings,
    before: pd.DataFrame,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[tuple[str, str], np.ndarray]]:
    """Every group's intervention on size-matched random heads.

    For each group and sampler (``layer``: as many heads in each of the group's layers;
    ``any``: the same number anywhere; :func:`random_head_sets`, seeded), draw
    ``settings.random_draws`` sets of other heads and force each drawn head to the
    target of the group head it stands in for (the draws keep the group's layer order).

    Returns:
        One row per (group, sampler, draw): ``heads``, ``accuracy``, ``gain`` (accuracy
        change against ``before``); and per (group, sampler) the ``[draws, prompts]``
        per-prompt changes in correctness, for :func:`random_margin`.
    """
    correct_before = before["correct"].to_numpy(float)
    rows, changes = [], {}
    jobs = [(group, sampler) for group, forced in groups.items() if forced for sampler in SAMPLERS]
    bar = tqdm(total=len(jobs) * settings.random_draws, desc="random heads", disable=not progress)
    for index, (group, sampler) in enumerate(jobs):
        forced = sorted(groups[group])
        heads = [head for head, _ in forced]
        draws = random_head_sets(
            heads,
            loaded.n_layers,
            loaded.n_heads,
            settings.random_draws,
            seed=settings.seed + 1000 * (index + 1),
            match=sampler,
        )
        per_draw = []
        for draw, random_heads in enumerate(draws):
            stand_ins = [(h, target) for h, (_, target) in zip(random_heads, forced, strict=True)]
            after = intervene(loaded, runs, stand_ins)
            change = after["correct"].to_numpy(float) - correct_before
            per_draw.append(change)
            rows.append(
                {
                    "group": group,
                    "sampler": sampler,
                    "draw": draw,
                    "heads": _heads_text(stand_ins),
                    "accuracy": float(after["correct"].mean()),
                    "gain": float(change.mean()),
                }
            )
            bar.update()
        changes[(group, sampler)] = np.stack(per_draw)
    bar.close()
    columns = ["group", "sampler", "draw", "heads", "accuracy", "gain"]
    return pd.DataFrame(rows, columns=columns), changes


def random_margin(
    circuit_change: np.ndarray, random_changes: Sequence[np.ndarray], settings: ReuseSettings
) -> dict[str, float]:
    """The circuit's gain minus the 95th percentile of random heads' gains, with a
    bootstrap CI over prompts (each resample recomputes every draw's gain and the
    percentile on the same prompts).

    Args:
        circuit_change: ``[prompts]`` per-prompt change in correctness of the group.
        random_changes: One ``[draws, prompts]`` array per sampler; the percentile is
            the largest of the samplers' (the stricter control).
    """

    def statistic(prompts: np.ndarray) -> float:
        gain = circuit_change[prompts].mean()
        return gain - max(
            np.quantile(changes[:, prompts].mean(axis=1), RANDOM_QUANTILE)
            for changes in random_changes
        )

    everything = np.arange(len(circuit_change))
    samples = bootstrap(
        statistic, (len(circuit_change),), settings.bootstrap_samples, settings.seed
    )
    low, high = percentile_interval(samples, settings.confidence)
    return {"margin": float(statistic(everything)), "margin_ci_low": low, "margin_ci_high": high}


def intervention_table(
    loaded,
    runs: InterventionRuns,
    groups: Mapping[str, Sequence[Forced]],
    settings: ReuseSettings,
    before: pd.DataFrame | None = None,
    random_changes: Mapping[tuple[str, str], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Accuracy and mean LD before and after the intervention, per head group, with
    bootstrap CIs (the change is paired over prompts) and, given ``random_changes``
    (:func:`random_controls`), each sampler's 95th-percentile random gain, where the
    group's gain falls among the random gains, and :func:`random_margin`."""
    before = intervene(loaded, runs, []) if before is None else before
    rows = []
    for group, forced in [("none", []), *groups.items()]:
        after = before if not forced else intervene(loaded, runs, forced)
        change = after["correct"].to_numpy(float) - before["correct"].to_numpy(float)
        row = {
            "group": group,
            "heads": _heads_text(forced),
            "targets": " ".join(target for _, target in forced),
            "n_heads": len(forced),
            "n_prompts": len(after),
            "accuracy": float(after["correct"].mean()),
            "accuracy_before": float(before["correct"].mean()),
            "gain": float(change.mean()),
            "mean_logit_diff": float(after["logit_diff"].mean()),
            "mean_logit_diff_before": float(before["logit_diff"].mean()),
        }
        for name, values in (("accuracy", after["correct"].to_numpy(float)), ("change", change)):
            low, high = bootstrap_ci(
                values, np.mean, settings.bootstrap_samples, settings.confidence, settings.seed
            )
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        if random_changes is not None and forced:
            per_sampler = [random_changes[(group, sampler)] for sampler in SAMPLERS]
            for sampler, changes in zip(SAMPLERS, per_sampler, strict=True):
                gains = changes.mean(axis=1)
                row[f"random_{sampler}_p95"] = float(np.quantile(gains, RANDOM_QUANTILE))
                row[f"random_{sampler}_below"] = float(np.mean(gains < row["gain"]))
            row.update(random_margin(change, per_sampler, settings))
        rows.append(row)
    return pd.DataFrame(rows)


def per_head_intervention(
    loaded,
    runs: InterventionRuns,
    effects: pd.DataFrame,
    n_heads: int,
    classes: Mapping[Head, str] | None = None,
    progress: bool = True,
    before: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Intervene on heads alone, stage by stage: at stages 1 and 2 (the movers' and the
    inhibition heads' stages, which the intervention is about) the ``n_heads`` heads
    with the largest |effect| are made to attend to the wrong answers
    (the inhibition heads' IOI-like target). Both effects are measured as a loss of the
    behaviour: the path-patching effect is the normalized LD drop when the head carries
    corrupted information, the intervention effect the mean LD drop when the head
    attends IOI-like (positive: the intervention hurts).

    Returns:
        One row per (stage, head): ``stage, layer, head, class`` (its Colored Objects
        class, if ``classes``), ``path_patching_effect`` (signed, at that stage),
        ``intervention_effect``, ``accuracy``.
    """
    before = intervene(loaded, runs, []) if before is None else before
    base = before["logit_diff"].mean()
    chosen = []
    for _, stage in effects[effects["stage"] <= 2].groupby("stage", sort=True):
        order = stage["effect"].abs().sort_values(ascending=False).index
        chosen += list(stage.loc[order].head(n_heads).itertuples())
    measured: dict[Head, pd.DataFrame] = {}  # a head chosen at two stages runs once
    rows = []
    for r in tqdm(chosen, desc="per-head intervention", disable=not progress):
        head = (int(r.layer), int(r.head))
        if head not in measured:
            measured[head] = intervene(loaded, runs, [(head, "wrong_answers")])
        after = measured[head]
        rows.append(
            {
                "stage": int(r.stage),
                "layer": head[0],
                "head": head[1],
                "class": (classes or {}).get(head, ""),
                "path_patching_effect": float(r.effect),
                "intervention_effect": float(base - after["logit_diff"].mean()),
                "accuracy": float(after["correct"].mean()),
            }
        )
    columns = ["stage", "layer", "head", "class", "path_patching_effect"]
    return pd.DataFrame(rows, columns=[*columns, "intervention_effect", "accuracy"])


#: Head classes left out of the "without movers" correlation: forcing a mover onto the
#: wrong colours makes it copy them, which builds part of the correlation in.
MOVER_CLASSES = ("mover", "negative mover")


def spearman_with_ci(table: pd.DataFrame, settings: ReuseSettings) -> dict:
    """Spearman rho between intervention and path-patching effects, with a bootstrap
    CI over heads (resamples where either effect is constant are skipped) and scipy's
    p-value."""
    from scipy.stats import spearmanr

    x = table["intervention_effect"].to_numpy()
    y = table["path_patching_effect"].to_numpy()
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"spearman": None, "p_value": None, "n_heads": len(x)}
    result = spearmanr(x, y)

    def statistic(index: np.ndarray) -> float | None:
        if np.ptp(x[index]) > 0 and np.ptp(y[index]) > 0:
            return spearmanr(x[index], y[index]).statistic
        return None

    samples = bootstrap(statistic, (len(x),), settings.bootstrap_samples, settings.seed)
    low, high = percentile_interval(samples, settings.confidence)
    return {
        "spearman": float(result.statistic),
        "p_value": float(result.pvalue),
        "ci_low": low,
        "ci_high": high,
        "n_heads": len(x),
    }


def correlations(per_head: pd.DataFrame, settings: ReuseSettings) -> dict[str, dict]:
    """:func:`spearman_with_ci` per path-patching stage (``stage1``, ``stage2``, ...),
    and for stage 1 without the heads that are movers on Colored Objects (``class``) or
    on IOI (``ioi_class``) (``stage1_without_movers``)."""
    result = {}
    for stage, rows in per_head.groupby("stage", sort=True):
        result[f"stage{stage}"] = spearman_with_ci(rows, settings)
    movers = per_head["class"].isin(MOVER_CLASSES)
    if "ioi_class" in per_head:
        movers |= per_head["ioi_class"].isin(MOVER_CLASSES)
    stage1 = per_head[(per_head["stage"] == 1) & ~movers]
    result["stage1_without_movers"] = spearman_with_ci(stage1, settings)
    return result


def intervention_results(
    loaded,
    records: Sequence[TaskRecord],
    reference_classes: pd.DataFrame,
    target_table: pd.DataFrame,
    target_classes: pd.DataFrame,
    settings: ReuseSettings,
    task: str = TARGET_TASK,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Rule ``reuse_intervention``, on all of the task's prompts.

    Args:
        reference_classes: The IOI head table (classes, ``in_circuit``).
        target_table: The task's path-patching table in the configured position mode.
        target_classes: The task's head table (its classes label the per-head rows).

    Returns:
        The groups table (:func:`intervention_table`; the groups with a negative mover
        once more with the other negative-mover target, ``target_variant`` "other"),
        the random controls (:func:`random_controls`), the per-head table
        (:func:`per_head_intervention`) and the correlations (:func:`correlations`).
    """
    runs = prepare_intervention(loaded, records, task)
    circuit = circuit_heads(reference_classes)
    groups = intervention_groups(reference_classes, circuit, settings.negative_mover_target)
    before = intervene(loaded, runs, [])  # the unmodified model, shared by every table
    random_table, random_changes = random_controls(loaded, runs, groups, settings, before, progress)
    table = intervention_table(loaded, runs, groups, settings, before, random_changes)
    table.insert(1, "target_variant", "configured")
    other = next(t for t in ("answer", "wrong_answers") if t != settings.negative_mover_target)
    # Only the groups with a negative mover change with its target.
    alternative = {
        name: forced
        for name, forced in intervention_groups(reference_classes, circuit, other).items()
        if forced != groups[name]
    }
    if alternative:
        extra = intervention_table(loaded, runs, alternative, settings, before)
        extra = extra[extra["group"] != "none"]
        extra.insert(1, "target_variant", "other")
        table = pd.concat([table, extra], ignore_index=True)
    per_head = per_head_intervention(
        loaded,
        runs,
        stage_effects(target_table),
        settings.intervention_heads,
        head_classes(target_classes),
        progress,
        before,
    )
    ioi_classes = head_classes(reference_classes)
    per_head.insert(
        4,
        "ioi_class",
        [
            ioi_classes.get((layer, head), "")
            for layer, head in zip(per_head["layer"], per_head["head"], strict=True)
        ],
    )
    return table, random_table, per_head, correlations(per_head, settings)
