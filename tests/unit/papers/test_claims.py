"""The verdict policy (circuit_repro.papers.claims): one rule per claim kind, the same
for every paper, and claims files as data."""

from __future__ import annotations

import math

import pytest

from circuit_repro.papers import PAPERS
from circuit_repro.papers.claims import (
    CLAIM_COLUMNS,
    VERDICTS,
    Claim,
    ClaimsFileError,
    Measurement,
    claims_html,
    claims_table,
    items_needed,
    judge,
    load_claims,
)

VALUE = Claim(
    id="v",
    text="a value",
    kind="value",
    scope="behaviour",
    paper_model="gpt2",
    paper_value=0.8,
    source="Table 1",
    reason="test",
    tolerance=0.1,
    holds="it still rises",
)
DIRECTION = Claim(
    id="d",
    text="A above B",
    kind="direction",
    scope="mechanism",
    paper_model="gpt2",
    paper_value=0.3,
    source="Figure 2",
    reason="test",
    tasks=("ioi",),
)
DONE = {"ioi": {"accuracy": 0.99, "accuracy_ci_low": 0.97, "chance": 0.5, "near_chance": False}}
AT_CHANCE = {"ioi": {"accuracy": 0.55, "accuracy_ci_low": 0.45, "chance": 0.5, "near_chance": True}}


def measured(value, low, high, **fields):
    return Measurement(claim_id="v", value=value, ci_low=low, ci_high=high, **fields)


@pytest.mark.parametrize(
    ("low", "high", "holds", "verdict"),
    [
        (0.75, 0.85, None, "reproduced"),  # whole CI inside 0.8 +- 0.1
        (0.70, 0.90, None, "reproduced"),  # the band's edges count as inside
        (0.85, 0.95, None, "inconclusive"),  # straddles the upper edge
        (0.60, 0.75, None, "inconclusive"),  # straddles the lower edge
        (0.40, 0.60, True, "partly"),  # wholly outside, ordering holds
        (0.40, 0.60, False, "not reproduced"),
        (0.95, 1.00, False, "not reproduced"),
    ],
)
def test_value_claims_are_an_equivalence_test(low, high, holds, verdict):
    value = (low + high) / 2
    assert judge(VALUE, measured(value, low, high, holds=holds), {})[0] == verdict


def test_a_wider_ci_never_makes_a_value_claim_easier():
    narrow = judge(VALUE, measured(0.8, 0.75, 0.85), {})[0]
    wide = judge(VALUE, measured(0.8, 0.5, 1.1), {})[0]
    assert narrow == "reproduced"
    assert wide == "inconclusive"


def test_inconclusive_value_says_how_many_items_would_resolve_it():
    m = measured(0.86, 0.82, 0.94, n=16)
    verdict, rule = judge(VALUE, m, {})
    assert verdict == "inconclusive"
    # the CI reaches 0.08 above the estimate, 0.04 short of the edge at 0.9:
    # 16 * (0.08 / 0.04)^2 = 64
    assert items_needed(m, 0.9) == 64
    assert "about 64 items" in rule
    # a skewed CI: its reach towards the edge counts, not its half-width
    skewed = measured(0.2, 0.0, 0.2, n=16)
    assert items_needed(skewed, 0.1) == 64  # 16 * (0.2 / 0.1)^2
    assert items_needed(skewed, 0.1) > skewed.n


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [(0.1, 0.5, "reproduced"), (-0.5, -0.1, "not reproduced"), (-0.1, 0.4, "inconclusive")],
)
def test_direction_claims_by_the_side_of_zero(low, high, verdict):
    m = Measurement(claim_id="d", value=(low + high) / 2, ci_low=low, ci_high=high)
    assert judge(DIRECTION, m, DONE)[0] == verdict


def test_negative_direction_claims_mirror():
    claim = Claim(**{**DIRECTION.__dict__, "sign": "negative"})
    m = Measurement(claim_id="d", value=-0.3, ci_low=-0.5, ci_high=-0.1)
    assert judge(claim, m, DONE)[0] == "reproduced"


def test_mechanism_claims_at_chance_are_inconclusive_whatever_the_numbers():
    m = Measurement(claim_id="d", value=0.3, ci_low=0.2, ci_high=0.4)
    verdict, rule = judge(DIRECTION, m, AT_CHANCE)
    assert verdict == "inconclusive: model at chance"
    assert "ioi accuracy 0.55" in rule


def test_behaviour_claims_are_not_gated():
    baselines = {"x": {"near_chance": True, "accuracy": 0.3, "accuracy_ci_low": 0.2, "chance": 0.3}}
    assert judge(VALUE, measured(0.8, 0.75, 0.85), baselines)[0] == "reproduced"


def test_missing_component_is_not_reproduced_and_architecture_is_not_applicable():
    missing = Measurement(claim_id="v", missing="the circuit has no negative mover")
    verdict, rule = judge(VALUE, missing, {})
    assert verdict == "not reproduced" and "no negative mover" in rule
    impossible = Measurement(claim_id="v", not_applicable="no MLP in this model")
    assert judge(VALUE, impossible, {})[0] == "not applicable"


def test_no_estimate_is_inconclusive_and_never_prints_nan():
    verdict, rule = judge(VALUE, Measurement(claim_id="v"), {})
    assert verdict == "inconclusive"
    assert "nan" not in rule.lower()


def test_claims_table_columns_order_and_unknown_measurements():
    claims = {"v": VALUE, "d": DIRECTION}
    rows = claims_table(
        "toy",
        "tiny",
        claims,
        [Measurement(claim_id="d", value=0.3, ci_low=0.2, ci_high=0.4), measured(0.8, 0.75, 0.85)],
        DONE,
    )
    assert list(rows.columns) == CLAIM_COLUMNS
    assert list(rows["claim_id"]) == ["v", "d"]  # claims file order
    assert set(rows["verdict"]) <= set(VERDICTS)
    assert list(rows["paper_model"]) == ["gpt2", "gpt2"]
    assert all(rows["rule"].str.len() > 10)
    with pytest.raises(ValueError, match="not in the toy claims file"):
        claims_table("toy", "tiny", claims, [Measurement(claim_id="zz")], DONE)
    page = claims_html(rows)
    assert "rule that decided" in page and "How verdicts are decided" in page


def test_every_registered_paper_has_a_valid_claims_file():
    for paper in PAPERS.values():
        claims = load_claims(paper.claims_file)
        for claim in claims.values():
            assert claim.source and claim.reason and claim.paper_model, claim.id
            if claim.kind == "value":
                assert claim.tolerance is not None and claim.tolerance > 0
            # Only a direction claim may lack the paper's number (the paper states the
            # direction alone).
            assert math.isfinite(claim.paper_value) or claim.kind == "direction", claim.id


def test_only_direction_claims_may_omit_the_paper_value(tmp_path):
    path = tmp_path / "claims.yaml"
    entry = "{{id: x, text: t, kind: {kind}, scope: behaviour, paper_model: m, paper_value: null, {extra}source: s, reason: r}}"
    path.write_text("claims:\n  - " + entry.format(kind="direction", extra="") + "\n")
    assert math.isnan(load_claims(path)["x"].paper_value)
    path.write_text("claims:\n  - " + entry.format(kind="value", extra="tolerance: 1, ") + "\n")
    with pytest.raises(ClaimsFileError, match="only a direction claim"):
        load_claims(path)


def test_paper_values_may_be_fractions_of_counts(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(
        "claims:\n  - {id: x, text: t, kind: value, scope: behaviour, paper_model: m,"
        " paper_value: 3/18, tolerance: 0.1, source: s, reason: r}\n"
    )
    assert load_claims(path)["x"].paper_value == 3 / 18


def test_claims_file_errors_are_one_line(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  - id: x\n    text: t\n    kind: guess\n    scope: behaviour\n")
    with pytest.raises(ClaimsFileError, match=r"claim 'x': kind 'guess' is not one of"):
        load_claims(path)
    path.write_text(
        "claims:\n  - {id: x, text: t, kind: value, scope: behaviour, paper_model: m,"
        " paper_value: 1, source: s, reason: r}\n"
    )
    with pytest.raises(ClaimsFileError, match="a value claim needs a tolerance"):
        load_claims(path)
