"""Recall vs reasoning (Fartale et al. 2025): the 2x2 table and the dissociation test on a
planted dissociation, the held-out split, and the claims."""

from __future__ import annotations

import pandas as pd
import pytest

from circuit_repro.papers.claims import load_claims
from circuit_repro.papers.recall import FAMILIES, LEVELS, PAPER, RecallSettings
from circuit_repro.papers.recall.analysis import two_by_two
from circuit_repro.papers.recall.claims import recall_claims


def planted_ablations(n_pairs=20, draws=3) -> pd.DataFrame:
    """Every prompt correct, except: ablating the recall heads breaks every recall prompt,
    ablating the reasoning heads every reasoning prompt; neurons and random sets nothing."""
    rows = []
    for level in LEVELS:
        sets = [("none", 0), ("recall", 0), ("reasoning", 0)]
        sets += [(f"random_{f}", d) for f in FAMILIES for d in range(draws)]
        for ablated, draw in sets:
            for pair in range(n_pairs):
                for family in FAMILIES:
                    broken = level == "head" and ablated == family
                    rows.append({"level": level, "ablated": ablated, "draw": draw, "size": 2,
                                 "id": 2 * pair + FAMILIES.index(family), "pair_id": pair,
                                 "family": family, "correct": not broken})  # fmt: skip
    return pd.DataFrame(rows)


def test_two_by_two_shows_a_planted_double_dissociation():
    table, contrasts = two_by_two(planted_ablations(), RecallSettings(bootstrap_samples=200))
    head = table[table["level"] == "head"].set_index(["ablated", "measured"])["drop"]
    assert head[("recall", "recall")] == 1.0 and head[("recall", "reasoning")] == 0.0
    assert head[("reasoning", "reasoning")] == 1.0 and head[("reasoning", "recall")] == 0.0
    values = contrasts.set_index(["level", "measure"])["value"]
    assert values[("head", "interaction")] == 2.0
    assert values[("head", "double")] == 1.0
    assert values[("head", "recall_vs_random")] == 1.0
    assert values[("neuron", "interaction")] == 0.0
    assert values[("head_vs_neuron", "interaction_difference")] == 2.0
    claims = recall_claims("m", contrasts, {"recall_reasoning": {"near_chance": False}})
    assert set(claims["claim_id"]) == set(load_claims(PAPER.claims_file))
    verdicts = claims.set_index("claim_id")["verdict"]
    assert verdicts["double_dissociation"] == "reproduced"
    assert verdicts["neurons_weaker"] == "reproduced"


def test_one_selective_circuit_is_not_a_double_dissociation():
    ablations = planted_ablations()
    reasoning_broken = (ablations["ablated"] == "reasoning") & (ablations["family"] == "reasoning")
    ablations.loc[reasoning_broken, "correct"] = True  # only the recall circuit is selective
    _, contrasts = two_by_two(ablations, RecallSettings(bootstrap_samples=200))
    values = contrasts.set_index(["level", "measure"])["value"]
    assert values[("head", "interaction")] == 1.0
    claims = recall_claims("m", contrasts, {"recall_reasoning": {"near_chance": False}})
    assert claims.set_index("claim_id").loc["double_dissociation", "verdict"] != "reproduced"


def test_no_dissociation_is_not_reproduced_or_inconclusive():
    ablations = planted_ablations()
    ablations["correct"] = True  # nothing breaks anything
    _, contrasts = two_by_two(ablations, RecallSettings(bootstrap_samples=200))
    claims = recall_claims("m", contrasts, {"recall_reasoning": {"near_chance": False}})
    assert not (claims["verdict"] == "reproduced").any()


def test_split_keeps_ablation_pairs_out_of_location():
    from circuit_repro.papers.recall.analysis import split_pairs
    from circuit_repro.tasks.records import TaskRecord

    records = [
        TaskRecord.from_dict(
            {
                "task": "recall_reasoning",
                "id": i,
                "prompt": "p",
                "answer": " a",
                "wrong_answer": " b",
                "roles": {"END": 0},
                "counterfactuals": {},
                "pair_id": i // 2,
                "family": FAMILIES[i % 2],
            }
        )  # fmt: skip
        for i in range(10)
    ]
    locate_on, ablate_on = split_pairs(records, 3)
    assert {r.fields["pair_id"] for r in ablate_on} == {0, 1, 2}
    assert not {r.fields["pair_id"] for r in locate_on} & {0, 1, 2}
    with pytest.raises(ValueError, match="lower recall.ablation_pairs"):
        split_pairs(records, 5)


def test_reasoning_claims_are_gated_on_the_reasoning_familys_own_baseline():
    """A model that picks between the two context cities at random (pairwise 0.5) while
    recalling every fact: the planted dissociation's reasoning claims are inconclusive,
    its recall claims stand."""
    from circuit_repro.papers.recall.claims import family_baselines, family_task

    n = 80
    scores = pd.DataFrame({
        "id": range(n),
        "pairwise_correct": [True if i % 2 == 0 else i % 4 == 1 for i in range(n)],
        "candidate_correct": [True if i % 2 == 0 else i % 4 == 1 for i in range(n)],
        "logit_diff": 1.0, "top1_correct": True, "prob_diff": 0.1, "chance": 1 / 3,
    })  # fmt: skip
    families = {i: FAMILIES[i % 2] for i in range(n)}
    baselines = family_baselines(scores, families, "m", 500, 0.95, seed=0)
    assert baselines[family_task("recall")]["accuracy"] == 1.0
    assert baselines[family_task("reasoning")]["accuracy"] == 0.5
    assert baselines[family_task("reasoning")]["chance"] == 0.5
    assert baselines[family_task("reasoning")]["near_chance"]
    assert not baselines[family_task("recall")]["near_chance"]
    _, contrasts = two_by_two(planted_ablations(), RecallSettings(bootstrap_samples=200))
    baselines["recall_reasoning"] = {"near_chance": False}
    verdicts = recall_claims("m", contrasts, baselines).set_index("claim_id")["verdict"]
    assert verdicts["recall_selective"] == verdicts["recall_vs_random"] == "reproduced"
    for claim_id in ("reasoning_selective", "reasoning_vs_random", "double_dissociation"):
        assert verdicts[claim_id] == "inconclusive: model at chance", claim_id
