"""The IOI position feature and the MLP-in-the-middle illusion (Makelov et al. 2023, §4).

Base and source prompts use the same names; the source has the opening clause's names
in the other order (ABB <-> BAB), so the answer is the same and only the *position* of
the subject's first mention differs. Patching the position feature from the source
into the base at the final token should make the model answer with the subject: the
interchange target of a cross pair (ABB -> BAB or BAB -> ABB) is S, and that of a
same-order pair is IO.

Steps (each a function here, run in order by :func:`run_ioi`):

1. :func:`build_pairs`: seeded pairs whose training and test sets share no name,
   template, place or object (the paper splits names, places and objects in half and
   keeps one of three templates for testing).
2. :func:`scan_layers`: the whole residual stream and the whole MLP output patched at
   the final token, layer by layer, on the training pairs. The MLP that plays the part
   of GPT-2 small's MLP8 is the one at the layer whose residual stream carries the
   feature most (MLP8 sits where the S-inhibition heads have written the feature and
   the name movers have not yet read it); the control MLP is an earlier layer where
   neither patch moves the logit difference.
3. :func:`reader_heads`: the heads after that layer whose queries, patched at the final
   token, move the logit difference most: our name movers. Their query span is where
   the residual direction's "row-space part" is taken (the paper uses the span of the
   name movers' W_Q).
4. DAS (:func:`circuit_repro.engine.subspace.fit_das`) in the MLP's hidden
   activations, in the residual stream after that layer, and in the control MLP.
5. :func:`evaluate`: on held-out pairs, each site's full patch, learned direction, its
   row-space and kernel parts and a norm-matched random direction: FLDD and
   interchange accuracy with bootstrap CIs (Table 1), and the contrasts the claims use.

FLDD = 100 (1 - mean LD_patched / mean LD_clean) with LD = logit(IO) - logit(S) of the
base prompt (a ratio of means; above 100 when the patched model prefers S).
Interchange accuracy: how often the patched model's top token over the whole
vocabulary is the interchange target.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformer_lens.tools.analysis.interchange import (
    NormMatchedPlacebo,
    SubspaceInterchange,
    random_basis,
)

from circuit_repro.engine.hooks import Component
from circuit_repro.engine.metrics import LogitDiffMetric
from circuit_repro.engine.patching import PatchingRuns, patching_sweep, prompt_metric
from circuit_repro.engine.stats import bootstrap, percentile_interval
from circuit_repro.engine.subspace import (
    PositionRuns,
    collect_at,
    fewest_shapes,
    fit_das,
    full_patch,
    interchange_hook,
    read_span,
    row_space,
    split,
    unit,
)
from circuit_repro.errors import UserFacingError
from circuit_repro.papers.subspace import INTERVENTIONS, SubspaceSettings
from circuit_repro.tasks import ioi
from circuit_repro.tasks.base import single_token_id, single_token_words

#: Cross pairs the layer scan and the reader-head search run on (they only choose).
SCAN_PAIRS = 48

#: Share of templates held out for testing (the paper: one of three).
TEST_TEMPLATE_SHARE = 1 / 3


class SubspaceSetupError(UserFacingError, ValueError):
    """The model or settings leave the experiment undefined (names the fix)."""


# ------------------------------------------------------------------------- pairs


@dataclass
class PairSet:
    """IOI base/source pairs of one split.

    ``cross[i]``: the source has the other name order (target S), else the source is
    the base itself (target IO).
    """

    split: str
    records: list[dict]
    source_prompts: list[str]
    base: list[list[int]]
    source: list[list[int]]
    end: list[int]
    io: torch.Tensor  # [pairs] token ids
    subject: torch.Tensor
    target: torch.Tensor
    cross: np.ndarray  # [pairs] bool

    def __len__(self) -> int:
        return len(self.base)

    def subset(self, keep: np.ndarray) -> PairSet:
        index = np.flatnonzero(keep)
        return PairSet(
            self.split,
            [self.records[i] for i in index],
            [self.source_prompts[i] for i in index],
            [self.base[i] for i in index],
            [self.source[i] for i in index],
            [self.end[i] for i in index],
            self.io[index],
            self.subject[index],
            self.target[index],
            self.cross[index],
        )

    def table(self) -> pd.DataFrame:
        """One row per pair: split, template, order, cross, prompts, target."""
        return pd.DataFrame(
            {
                "split": self.split,
                "template": [r["template"] for r in self.records],
                "order": [r["order"] for r in self.records],
                "cross": self.cross,
                "prompt": [r["prompt"] for r in self.records],
                "source_prompt": self.source_prompts,
                "target": [
                    r["names"]["S"] if cross else r["names"]["IO"]
                    for r, cross in zip(self.records, self.cross, strict=True)
                ],
            }
        )


def vocabulary_split(tokenizer, seed: int) -> dict[str, dict[str, list]]:
    """Disjoint training and test vocabularies: names, places and objects halved, a
    third of the templates held out (seeded). Only single-token places and objects are
    used, so that prompts of one template have one length (one suffix pass per
    template)."""
    rng = random.Random(seed)
    words = {
        "names": list(single_token_words(tokenizer, ioi.NAMES)),
        "places": list(single_token_words(tokenizer, ioi.PLACES)),
        "objects": list(single_token_words(tokenizer, ioi.OBJECTS)),
    }
    templates = list(range(len(ioi.TEMPLATES)))
    rng.shuffle(templates)
    n_test = max(1, round(len(templates) * TEST_TEMPLATE_SHARE))
    split = {
        "train": {"templates": sorted(templates[n_test:])},
        "test": {"templates": sorted(templates[:n_test])},
    }
    for key, values in words.items():
        if len(values) < 4:
            raise SubspaceSetupError(
                f"only {len(values)} IOI {key} are single tokens for this tokenizer; the "
                "subspace paper needs at least 4 to split into training and test sets"
            )
        rng.shuffle(values)
        half = len(values) // 2
        split["train"][key], split["test"][key] = sorted(values[:half]), sorted(values[half:])
    return split


def build_pairs(tokenizer, vocabulary: dict, n_pairs: int, seed: int, split: str) -> PairSet:
    """``n_pairs`` pairs from one split's vocabulary. Training pairs cycle through
    ABB->ABB, BAB->BAB, ABB->BAB, BAB->ABB (a quarter each, as the paper's 200); test
    pairs are all cross pairs (ABB->BAB and BAB->ABB, half each)."""
    records = ioi.generate_ioi(
        tokenizer,
        n_pairs + n_pairs // 4 + 4,  # room for records whose swapped order fails
        seed,
        min_prompts=n_pairs,
        **vocabulary,
    )
    kept, sources = [], []
    for record in records:
        swapped = ioi.swap_order(tokenizer, record)
        if swapped is not None:
            kept.append(record)
            sources.append(swapped)
        if len(kept) == n_pairs:
            break
    if len(kept) < n_pairs:
        raise SubspaceSetupError(
            f"only {len(kept)} of {n_pairs} {split} IOI pairs could be built for this "
            "tokenizer; lower subspace.train_pairs / subspace.test_pairs"
        )
    cross = np.array([split == "test" or (i // 2) % 2 == 1 for i in range(len(kept))], dtype=bool)
    base = [tokenizer(r["prompt"])["input_ids"] for r in kept]
    source = [ids if c else b for (_, ids, _), b, c in zip(sources, base, cross, strict=True)]
    io_ids = torch.tensor([single_token_id(tokenizer, r["answer"]) for r in kept])
    s_ids = torch.tensor([single_token_id(tokenizer, r["wrong_answer"]) for r in kept])
    return PairSet(
        split=split,
        records=kept,
        source_prompts=[
            prompt if c else r["prompt"]
            for (prompt, _, _), r, c in zip(sources, kept, cross, strict=True)
        ],
        base=base,
        source=source,
        end=[r["roles"]["END"] for r in kept],
        io=io_ids,
        subject=s_ids,
        target=torch.where(torch.as_tensor(cross), s_ids, io_ids),
        cross=cross,
    )


def name_vocabulary(tokenizer) -> torch.Tensor:
    """Token ids of every single-token IOI name (the answers DAS's loss compares)."""
    names = single_token_words(tokenizer, ioi.NAMES)
    return torch.tensor([single_token_id(tokenizer, " " + name) for name in names])


# ----------------------------------------------------------------------- metrics


def logit_difference(logits: torch.Tensor, pairs: PairSet) -> np.ndarray:
    """LD = logit(IO) - logit(S) of each base prompt, ``[pairs]``."""
    rows = torch.arange(len(pairs))
    return (logits[rows, pairs.io] - logits[rows, pairs.subject]).double().numpy()


def fldd(ld_patched: np.ndarray, ld_clean: np.ndarray) -> float:
    """Fractional logit-difference decrease in percent (Makelov et al. 2023, eq. 4)."""
    return float(100.0 * (1.0 - np.mean(ld_patched) / np.mean(ld_clean)))


# -------------------------------------------------------------- activation patching


def _end_sweep(loaded, pairs: PairSet, components_at: Callable[[int], list[Component]]):
    """Patch components at the final token (source -> base), per prompt length.

    Returns the components' labels (of the first group) and the LD ``[components,
    pairs]`` under each patch, plus the clean LD."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(pairs.base):
        by_length.setdefault(len(ids), []).append(i)
    patched, clean, labels = None, np.zeros(len(pairs)), None
    for rows in by_length.values():
        end = pairs.end[rows[0]]
        runs = PatchingRuns(
            base_tokens=torch.tensor([pairs.base[i] for i in rows]),
            source_tokens=torch.tensor([pairs.source[i] for i in rows]),
            read_positions=torch.tensor([pairs.end[i] for i in rows]),
            direction="BAB <-> ABB",
        )
        # Only the two names' logits are computed: column 0 is IO, column 1 is S.
        token_ids = torch.stack([pairs.io[rows], pairs.subject[rows]], dim=1)
        metric = LogitDiffMetric(
            torch.zeros(len(rows), dtype=torch.long), torch.ones(len(rows), dtype=torch.long)
        )
        components = components_at(end)
        table = patching_sweep(
            loaded, runs, components, metric, progress=False, per_prompt=True, token_ids=token_ids
        )
        values = np.stack(table["per_prompt"].to_numpy())  # [components, rows]
        if patched is None:
            patched = np.zeros((len(components), len(pairs)))
            labels = table[["kind", "layer", "index"]]
        patched[:, rows] = values
        with torch.no_grad():
            clean[rows] = (
                prompt_metric(loaded, runs.base_tokens, runs, metric, token_ids=token_ids)
                .double()
                .numpy()
            )
    return labels, patched, clean


def scan_layers(loaded, pairs: PairSet) -> pd.DataFrame:
    """FLDD of patching the whole residual stream after each layer, and each layer's
    whole MLP output, at the final token (cross pairs): ``layer, site, fldd``."""
    layers = range(loaded.n_layers)

    def components(end: int) -> list[Component]:
        return [Component("resid_post", layer, position=end) for layer in layers] + [
            Component("mlp_out", layer, position=end) for layer in layers
        ]

    labels, patched, clean = _end_sweep(loaded, pairs, components)
    table = pd.DataFrame(
        {
            "layer": labels["layer"].to_numpy(),
            "site": labels["kind"].map({"resid_post": "resid", "mlp_out": "mlp"}).to_numpy(),
            "fldd": [fldd(row, clean) for row in patched],
            "mean_ld": patched.mean(axis=1),
            "clean_ld": float(clean.mean()),
            "n_pairs": len(pairs),
        }
    )
    return table


def choose_layers(scan: pd.DataFrame, n_layers: int, settings: SubspaceSettings) -> tuple[int, int]:
    """The MLP8 analogue and the control layer (see the module docstring).

    The analogue is the layer whose residual stream at the final token carries the
    feature most (largest full-patch FLDD), leaving at least one later layer for the
    heads that read it; the control is the nearest earlier layer whose residual-stream
    patch moves the logit difference by under a tenth as much."""
    if n_layers < 2:
        raise SubspaceSetupError(
            f"the subspace paper needs a model with at least 2 layers, this one has {n_layers}"
        )
    resid = scan[scan["site"] == "resid"].set_index("layer")["fldd"]
    layer = settings.layer
    if layer < 0:
        # Layer 0 only when nothing else leaves a later layer (2-layer test models).
        layer = int(resid.loc[min(1, n_layers - 2) : n_layers - 2].idxmax())
    if not 0 <= layer <= n_layers - 2:
        raise SubspaceSetupError(
            f"subspace.layer {layer} must be in [0, {n_layers - 2}] for this model (a later "
            "layer must hold the heads that read the feature)"
        )
    control = settings.control_layer
    if control < 0:
        # The nearest earlier layer where the feature has not arrived: its whole
        # residual stream moves the logit difference by under a tenth of the chosen
        # layer's (layer 0 would be a trivial control: there base and source differ
        # only by what attention has read of the swapped names).
        quiet = [i for i in range(1, layer) if abs(resid[i]) < 0.1 * abs(resid[layer])]
        others = resid.drop(index=layer).abs()
        control = max(quiet) if quiet else int(others.idxmin())
    if not 0 <= control < n_layers or control == layer:
        raise SubspaceSetupError(
            f"subspace.control_layer {control} must be a layer of the model other than "
            f"the analysed layer {layer}"
        )
    return layer, control


def reader_heads(loaded, pairs: PairSet, layer: int, n_heads: int) -> pd.DataFrame:
    """Every head after ``layer``, its query patched at the final token (cross pairs):
    ``layer, head, fldd, chosen`` (the ``n_heads`` with the largest FLDD chosen)."""
    later = range(layer + 1, loaded.n_layers)

    def components(end: int) -> list[Component]:
        return [
            Component("q", layer_, index=h, position=end)
            for layer_ in later
            for h in range(loaded.n_heads)
        ]

    labels, patched, clean = _end_sweep(loaded, pairs, components)
    table = pd.DataFrame(
        {
            "layer": labels["layer"].to_numpy(),
            "head": labels["index"].to_numpy(),
            "fldd": [fldd(row, clean) for row in patched],
        }
    )
    top = table["fldd"].nlargest(n_heads).index
    table["chosen"] = table.index.isin(top)
    return table


# ------------------------------------------------------------------ interventions


@dataclass
class Site:
    """Where DAS trains: a hook at the final token, and the subspace a direction is
    split against (its orthonormal basis)."""

    name: str
    layer: int
    hook: str
    row_basis: torch.Tensor  # [dim, rank]


def mlp_site(loaded, name: str, layer: int) -> Site:
    """An MLP's hidden activations; the split is against its output weights' row space."""
    w_out = loaded.bridge.blocks[layer].mlp.W_out  # [d_mlp, d_model]
    return Site(name, layer, f"blocks.{layer}.mlp.hook_post", row_space(w_out))


def interventions(
    site: Site, direction: torch.Tensor, seed: int
) -> dict[str, tuple[Callable, float]]:
    """Table 1's interventions at one site: ``name -> (intervention, norm)``, where
    norm is the length of the part of the unit direction used (NaN for the others)."""
    row, null = split(direction, site.row_basis)
    placebo_basis = random_basis(direction.numel(), 1, seed)
    reference = SubspaceInterchange(unit(direction))
    return {
        "full": (full_patch, float("nan")),
        "direction": (reference, 1.0),
        "rowspace": (SubspaceInterchange(unit(row)), float(row.norm())),
        "nullspace": (SubspaceInterchange(unit(null)), float(null.norm())),
        "placebo": (NormMatchedPlacebo(reference, placebo_basis), float("nan")),
    }


@dataclass
class SiteResult:
    """One site's learned direction and its held-out LDs and successes."""

    site: Site
    direction: torch.Tensor
    losses: tuple[float, ...]
    norms: dict[str, float]
    ld: dict[str, np.ndarray]  # intervention -> [pairs]
    success: dict[str, np.ndarray]


def run_site(
    site: Site,
    train: PositionRuns,
    test: PositionRuns,
    train_source: dict[str, torch.Tensor],
    test_source: dict[str, torch.Tensor],
    train_pairs: PairSet,
    test_pairs: PairSet,
    settings: SubspaceSettings,
) -> SiteResult:
    """DAS at one site on the training pairs, then every intervention on the test pairs
    (``*_source``: source activations at the final token, by hook name)."""
    fit = fit_das(
        train,
        site.hook,
        train_source[site.hook],
        train_pairs.target,
        rank=settings.rank,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed,
        vocabulary=name_vocabulary(train.loaded.tokenizer)
        if settings.loss_vocabulary == "names"
        else None,
    )
    direction = fit.basis[:, 0]
    ld, success, norms = {}, {}, {}
    for name, (intervention, norm) in interventions(site, direction, settings.seed + 1).items():
        if name == "nullspace" and not norm > 1e-6:
            continue
        logits = test.all_logits(
            [interchange_hook(site.hook, intervention, test_source[site.hook])]
        )
        ld[name] = logit_difference(logits, test_pairs)
        success[name] = (logits.argmax(-1) == test_pairs.target).numpy()
        norms[name] = norm
    return SiteResult(site, direction, fit.losses, norms, ld, success)


# ---------------------------------------------------------------------- the table


CONTRASTS = {
    "direction_minus_rowspace": ("direction", "rowspace"),
    "direction_minus_placebo": ("direction", "placebo"),
}


def table_one(
    results: Sequence[SiteResult],
    clean_ld: np.ndarray,
    clean_success: np.ndarray,
    settings: SubspaceSettings,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1 (FLDD and interchange accuracy per site and intervention, with CIs) and
    the contrasts (paired differences, same resamples)."""
    keys = [(r.site.name, name) for r in results for name in INTERVENTIONS if name in r.ld]
    by_site = {r.site.name: r for r in results}
    ld = np.stack([by_site[s].ld[i] for s, i in keys])  # [k, pairs]
    success = np.stack([by_site[s].success[i] for s, i in keys]).astype(float)
    contrasts = [
        (site, contrast, metric, keys.index((site, a)), keys.index((site, b)))
        for site in by_site
        for contrast, (a, b) in CONTRASTS.items()
        if (site, a) in keys and (site, b) in keys
        for metric in ("fldd", "accuracy")
    ]

    def statistic(idx: np.ndarray) -> np.ndarray:
        flddv = 100.0 * (1.0 - ld[:, idx].mean(1) / clean_ld[idx].mean())
        acc = success[:, idx].mean(1)
        diffs = [
            (flddv if metric == "fldd" else acc)[a] - (flddv if metric == "fldd" else acc)[b]
            for _site, _c, metric, a, b in contrasts
        ]
        return np.concatenate([flddv, acc, diffs, [clean_success[idx].mean()]])

    n = len(clean_ld)
    samples = bootstrap(statistic, [n], settings.bootstrap_samples, settings.seed)
    point = statistic(np.arange(n))
    intervals = [percentile_interval(samples[:, j], settings.confidence) for j in range(len(point))]
    k = len(keys)
    rows = [
        {
            "site": "clean",
            "layer": -1,
            "intervention": "none",
            "fldd": 0.0,
            "fldd_ci_low": 0.0,
            "fldd_ci_high": 0.0,
            "accuracy": point[-1],
            "accuracy_ci_low": intervals[-1][0],
            "accuracy_ci_high": intervals[-1][1],
            "mean_ld": float(clean_ld.mean()),
            "norm": float("nan"),
            "n_pairs": n,
        }
    ]
    for j, (site, name) in enumerate(keys):
        rows.append(
            {
                "site": site,
                "layer": by_site[site].site.layer,
                "intervention": name,
                "fldd": point[j],
                "fldd_ci_low": intervals[j][0],
                "fldd_ci_high": intervals[j][1],
                "accuracy": point[k + j],
                "accuracy_ci_low": intervals[k + j][0],
                "accuracy_ci_high": intervals[k + j][1],
                "mean_ld": float(ld[j].mean()),
                "norm": by_site[site].norms[name],
                "n_pairs": n,
            }
        )
    contrast_rows = [
        {
            "site": site,
            "contrast": contrast,
            "metric": metric,
            "value": point[2 * k + c],
            "ci_low": intervals[2 * k + c][0],
            "ci_high": intervals[2 * k + c][1],
            "n_pairs": n,
        }
        for c, (site, contrast, metric, _a, _b) in enumerate(contrasts)
    ]
    return pd.DataFrame(rows), pd.DataFrame(contrast_rows)


@dataclass
class IOIResult:
    """Everything the IOI half writes (one table per output file)."""

    pairs: pd.DataFrame
    scan: pd.DataFrame
    readers: pd.DataFrame
    table: pd.DataFrame
    contrasts: pd.DataFrame
    training: pd.DataFrame
    directions: dict[str, torch.Tensor]


def run_ioi(loaded, settings: SubspaceSettings) -> IOIResult:
    """The whole IOI experiment on one model (see the module docstring)."""
    tokenizer = loaded.tokenizer
    vocabulary = vocabulary_split(tokenizer, settings.seed)
    train_pairs = build_pairs(
        tokenizer, vocabulary["train"], settings.train_pairs, settings.seed, "train"
    )
    test_pairs = build_pairs(
        tokenizer, vocabulary["test"], settings.test_pairs, settings.seed + 1, "test"
    )
    # The scan and the reader heads only choose layers and heads: a few dozen cross
    # pairs do, taken from as few prompt shapes as possible (one pass per shape).
    cross = np.flatnonzero(train_pairs.cross)
    shapes = [(len(train_pairs.base[i]), train_pairs.end[i]) for i in cross]
    keep = np.zeros(len(train_pairs), dtype=bool)
    keep[cross[fewest_shapes(shapes, SCAN_PAIRS)]] = True
    cross_train = train_pairs.subset(keep)
    scan = scan_layers(loaded, cross_train)
    layer, control = choose_layers(scan, loaded.n_layers, settings)
    scan["role"] = ""
    scan.loc[scan["layer"] == layer, "role"] = "chosen"
    scan.loc[scan["layer"] == control, "role"] = "control"
    readers = reader_heads(loaded, cross_train, layer, settings.reader_heads)
    chosen = [(int(r.layer), int(r.head)) for r in readers[readers["chosen"]].itertuples()]
    reader_resid = collect_at(
        loaded,
        cross_train.base,
        cross_train.end,
        [f"blocks.{layer_}.hook_resid_pre" for layer_, _ in chosen],
    )
    span = read_span(
        loaded,
        chosen,
        {layer_: reader_resid[f"blocks.{layer_}.hook_resid_pre"] for layer_, _ in chosen},
    )
    sites = [
        mlp_site(loaded, "mlp", layer),
        Site("resid", layer, f"blocks.{layer}.hook_resid_post", span),
        mlp_site(loaded, "control_mlp", control),
    ]
    hooks = [site.hook for site in sites]
    layers = sorted({site.layer for site in sites})
    train_source = collect_at(loaded, train_pairs.source, train_pairs.end, hooks)
    test_source = collect_at(loaded, test_pairs.source, test_pairs.end, hooks)
    train_runs = PositionRuns(loaded, train_pairs.base, train_pairs.end, train_pairs.end, layers)
    test_runs = PositionRuns(loaded, test_pairs.base, test_pairs.end, test_pairs.end, layers)
    clean = test_runs.all_logits()
    clean_ld = logit_difference(clean, test_pairs)
    clean_success = (clean.argmax(-1) == test_pairs.io).numpy()
    results = [
        run_site(
            site,
            train_runs.from_layer(site.layer),
            test_runs.from_layer(site.layer),
            train_source,
            test_source,
            train_pairs,
            test_pairs,
            settings,
        )
        for site in sites
    ]
    table, contrasts = table_one(results, clean_ld, clean_success, settings)
    training = pd.DataFrame(
        [
            {"site": r.site.name, "layer": r.site.layer, "epoch": epoch + 1, "loss": loss}
            for r in results
            for epoch, loss in enumerate(r.losses)
        ]
    )
    directions = {}
    for r in results:
        row, null = split(r.direction, r.site.row_basis)
        directions[r.site.name] = r.direction.contiguous()
        directions[f"{r.site.name}.rowspace"] = row.contiguous()
        directions[f"{r.site.name}.nullspace"] = null.contiguous()
    pairs = pd.concat([train_pairs.table(), test_pairs.table()], ignore_index=True)
    return IOIResult(pairs, scan, readers, table, contrasts, training, directions)
