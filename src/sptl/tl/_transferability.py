"""Will a transfer work? Scores of a source -> target label transfer that need no target labels."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from .. import _keys, _validate
from .._docs import inject_docs
from ..models._knn import KNNTransfer
from ..pp._expression import count_target, log_normalize
from ..pp._graph import DEFAULT_SMOOTH, build_graph, spread_labels
from ._shift import mmd_test
from ._weights import kliep_weights, normalize_weights

#: Fewest labelled target spots (and per class, for the cross-validation) to compare with target-only training.
MIN_TARGET_LABELS = 5
#: Classes predicted for less than this share of the spots are left out of the expected macro-F1.
MIN_CLASS_SHARE = 0.02
#: Weight of the class-wise coverage in ``coverage_score = expected_f1 * exp(COVERAGE_WEIGHT * class_coverage)``
#: (the headline before ``marker_auc``; ``score = coverage_score * marker_auc``). Chosen on the 15 HER2ST
#: cross-patient pairs whose target is from patients A-C (grid 0-8); with ``marker_auc`` the weight picked there
#: is 6, leave-one-target-out 5-6 (``benchmarks/diagnostics.py``).
COVERAGE_WEIGHT = 5.0
#: Default ``min_score``: picked on the 30 HER2ST cross-patient pairs (right for 22 of them; 5 of the 6
#: leave-one-target-out folds pick it too, the sixth 0.37).
MIN_SCORE = 0.35
#: Marker genes per source class (Wilcoxon rank on the source) whose target expression ``marker_auc`` checks.
#: On the 30 HER2ST cross-patient pairs ``marker_score`` is about as good for 40-200 markers (leave-one-target-out
#: Spearman 0.63-0.65) and less stable for 10-30 (0.42-0.66); 100 is in the middle of that plateau.
N_MARKERS = 100
#: Source spots per class that rank the markers of ``marker_auc`` (a seeded sample above it keeps large sources fast).
MARKER_MAX_PER_CLASS = 1000
#: Scores where larger means a better transfer; the others (entropy, mmd2) are better when smaller.
LOWER_IS_BETTER = ("entropy", "mmd2")
#: Every score :func:`transferability` computes (``rank_sources(by=...)`` accepts each).
SCORES = (
    "score",
    "coverage_score",
    "marker_auc",
    "expected_f1",
    "class_coverage",
    "coverage",
    "score_global",
    "source_f1",
    "iw_source_accuracy",
    "confidence",
    "entropy",
    "snd",
    "mmd2",
)
#: Scores that need a committee of other sources (``rank_sources`` with 3+ candidates or
#: ``transferability(references=...)``).
COMMITTEE_SCORES = ("agreement", "committee_score")
#: Fewest transfers (the candidate included) whose agreement rates identify each one's accuracy.
MIN_COMMITTEE = 3


class NegativeTransferWarning(UserWarning):
    """The transfer is likely to do worse than not transferring (or than training on the target alone)."""


def _smoothed(proba: np.ndarray, coords: np.ndarray | None, weight: float) -> np.ndarray:
    if coords is None or weight == 0 or len(proba) < 2:
        return proba
    graph = build_graph(coords, n_neighs=min(6, len(proba) - 1))[0]
    return spread_labels(proba, graph, weight)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)


def soft_neighborhood_density(proba: np.ndarray, temperature: float = 0.05, max_n: int = 3000) -> float:
    """Soft neighbourhood density (Saito et al. 2021): larger when target predictions form dense clusters."""
    if len(proba) > max_n:
        proba = proba[np.random.default_rng(0).choice(len(proba), max_n, replace=False)]
    p = proba / np.maximum(np.linalg.norm(proba, axis=1, keepdims=True), 1e-12)
    S = p @ p.T
    np.fill_diagonal(S, -np.inf)
    S = np.exp((S - S.max(axis=1, keepdims=True)) / temperature)
    S /= S.sum(axis=1, keepdims=True)
    return float(-_entropy(S).mean())


def expected_macro_f1(proba: np.ndarray, correct: np.ndarray) -> float:
    """Macro-F1 expected when each spot's label is right with probability ``correct``.

    The rest of a spot's mass is spread over the other classes in proportion to their probabilities;
    classes predicted for under ``MIN_CLASS_SHARE`` of the expected spots are left out, since a
    class absent from the target is not scored.
    """
    pred = proba.argmax(axis=1)
    rows = np.arange(len(pred))
    other = proba.copy()
    other[rows, pred] = 0
    E = other / np.maximum(other.sum(axis=1, keepdims=True), 1e-12) * (1 - correct)[:, None]
    E[rows, pred] = correct
    f1 = []
    for c in range(E.shape[1]):
        support = E[:, c].sum()
        if support < MIN_CLASS_SHARE * len(E):
            continue
        f1.append(2 * E[pred == c, c].sum() / (support + (pred == c).sum()))
    return float(np.mean(f1)) if f1 else 0.0


def class_coverage(pred: np.ndarray, sim_t: np.ndarray, codes: np.ndarray, sim_s: np.ndarray) -> float:
    """Coverage per predicted class, averaged over classes as macro-F1 averages over them.

    For every class predicted for at least ``MIN_CLASS_SHARE`` of the target spots: the mean similarity of
    the target spots predicted as that class to their nearest source spots, minus the mean similarity of
    the source spots of that class to their (other) nearest source spots. Negative when the target spots
    given a class lie further from the source than that class's own spots do.
    """
    n_classes = int(max(pred.max(initial=0), codes.max(initial=0))) + 1
    share = np.bincount(pred, minlength=n_classes) / max(len(pred), 1)
    keep = [c for c in np.flatnonzero(share >= MIN_CLASS_SHARE) if (codes == c).any()]
    if not keep:  # no class is predicted for enough spots: the plain coverage
        return float(sim_t.mean() - sim_s.mean())
    return float(np.mean([sim_t[pred == c].mean() - sim_s[codes == c].mean() for c in keep]))


def marker_auc(
    source_X: np.ndarray | sparse.spmatrix,
    codes: np.ndarray,
    target_X: np.ndarray | sparse.spmatrix,
    pred: np.ndarray,
    n_markers: int = N_MARKERS,
) -> float:
    """Do the target spots given a class carry that class's source markers? Class-wise AUC, averaged.

    ``source_X`` (labelled source spots, classes ``codes``) and ``target_X`` (target spots, predicted classes
    ``pred``) are log-normalised expression over the same genes. The ``n_markers`` top genes of every source
    class (Wilcoxon rank, class vs the other source spots; at most ``MARKER_MAX_PER_CLASS`` spots per class, a
    seeded sample) are z-scored over the target spots and averaged into a
    marker score; for every class predicted for at least ``MIN_CLASS_SHARE`` of the target (and not for all of
    it), the ROC AUC of that score between the spots predicted as the class and the rest. Averaged over those
    classes, like macro-F1; 0.5 (chance) when no class qualifies. Low when spots are given a class whose
    markers they lack, for example another tissue called after its nearest source class.
    """
    n_classes = int(max(pred.max(initial=0), codes.max(initial=0))) + 1
    sizes = np.bincount(codes, minlength=n_classes)
    share = np.bincount(pred, minlength=n_classes) / max(len(pred), 1)
    keep = [c for c in np.flatnonzero(share >= MIN_CLASS_SHARE) if sizes[c] >= 2 and share[c] < 1]
    if not keep or (sizes >= 2).sum() < 2:
        return 0.5
    ranked = np.flatnonzero(sizes >= 2)
    rng = np.random.default_rng(0)
    rows = np.sort(
        np.concatenate(
            [
                (idx if len(idx) <= MARKER_MAX_PER_CLASS else rng.choice(idx, MARKER_MAX_PER_CLASS, replace=False))
                for idx in (np.flatnonzero(codes == c) for c in ranked)
            ]
        )
    )
    src = AnnData(X=sparse.csr_matrix(source_X)[rows])
    src.obs["class"] = pd.Categorical(codes[rows].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's notes about log data / fragmented frames
        sc.tl.rank_genes_groups(src, "class", method="wilcoxon", n_genes=min(n_markers, src.n_vars), use_raw=False)
    names = src.uns["rank_genes_groups"]["names"]
    markers = {c: np.asarray(names[str(c)], dtype=np.int64) for c in keep}
    used = np.unique(np.concatenate(list(markers.values())))
    T = target_X[:, used]  # only the marker genes are made dense
    T = T.toarray() if sparse.issparse(T) else np.asarray(T, dtype=np.float64)
    T = (T - T.mean(axis=0)) / np.maximum(T.std(axis=0), 1e-6)
    auc = [roc_auc_score(pred == c, T[:, np.searchsorted(used, markers[c])].mean(axis=1)) for c in keep]
    return float(np.mean(auc))


def agreement_accuracy(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Accuracy of each of several labelings of the same spots, estimated from how often they agree.

    Unsupervised accuracy estimation (Platanios et al. 2014, "Estimating accuracy from unlabeled
    data"): when two transfers err independently and seldom make the same mistake, they agree on a
    spot with probability ``acc_i * acc_j``. The logarithm of every pairwise agreement rate is then
    ``log acc_i + log acc_j``, solved for all ``acc`` by least squares (exactly determined for three
    labelings, over-determined beyond). Needs at least ``MIN_COMMITTEE`` labelings.
    """
    m = len(labels)
    if m < MIN_COMMITTEE:
        msg = f"Estimating accuracy from agreement needs at least {MIN_COMMITTEE} labelings, got {m}."
        raise ValueError(msg)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    A = np.zeros((len(pairs), m))
    y = np.empty(len(pairs))
    for row, (i, j) in enumerate(pairs):
        A[row, [i, j]] = 1
        y[row] = np.log(max(float(np.mean(np.asarray(labels[i]) == np.asarray(labels[j]))), 1e-3))
    return np.clip(np.exp(np.linalg.lstsq(A, y, rcond=None)[0]), 0.0, 1.0)


def _knn_transfer(
    source: AnnData,
    target: AnnData,
    *,
    label_key: str,
    exclude: Sequence[str],
    layer: str | None,
    n_genes: int,
    n_comps: int,
    n_neighbors: int,
    smooth: float,
    spatial_key: str | None,
    min_shared_genes: int,
    seed: int,
) -> dict[str, Any]:
    """The knn transfer that :func:`assess` scores: the fitted model, the target's smoothed vote and labels.

    Also what a reference of the committee needs (its predicted labels), without the scores.
    """
    src_coords = tgt_coords = None
    if spatial_key is not None and smooth > 0:
        src_coords = _validate.check_spatial(source, spatial_key, "source")
        tgt_coords = _validate.check_spatial(target, spatial_key, "target")
    model = KNNTransfer(n_genes=n_genes, n_comps=n_comps, n_neighbors=n_neighbors, seed=seed)
    model.fit(
        source, label_key=label_key, target=target, layer=layer, exclude=exclude, min_shared_genes=min_shared_genes
    )
    labelled = _validate.check_labels([source], label_key, "source", exclude=exclude)[0].notna().to_numpy()
    if labelled.sum() < 2:
        msg = f"`source.obs[{label_key!r}]` has {int(labelled.sum())} usable labels: at least 2 are needed."
        raise ValueError(msg)
    emb_t = model.transform(target, layer=layer)
    p_t, sim_t = model._vote(emb_t, progress=False)
    p_t = _smoothed(p_t, tgt_coords, smooth)
    return {
        "model": model,
        "labelled": labelled,
        "source_coords": src_coords,
        "embedding": emb_t,
        "proba": p_t,
        "similarity": sim_t,
        "predicted": np.asarray(model.classes_, dtype=object)[p_t.argmax(axis=1)],
    }


def assess(
    source: AnnData,
    target: AnnData,
    *,
    label_key: str,
    exclude: Sequence[str],
    target_label_key: str | None,
    layer: str | None,
    n_genes: int,
    n_comps: int,
    n_neighbors: int,
    smooth: float,
    spatial_key: str | None,
    min_score: float,
    min_shared_genes: int,
    seed: int,
) -> dict[str, Any]:
    """All scores of one candidate transfer (validated inputs; nothing is written)."""
    known = None
    if target_label_key is not None:
        known = _target_labels(target, target_label_key, exclude)
    vote = _knn_transfer(
        source,
        target,
        label_key=label_key,
        exclude=exclude,
        layer=layer,
        n_genes=n_genes,
        n_comps=n_comps,
        n_neighbors=n_neighbors,
        smooth=smooth,
        spatial_key=spatial_key,
        min_shared_genes=min_shared_genes,
        seed=seed,
    )
    model, labelled, src_coords = vote["model"], vote["labelled"], vote["source_coords"]
    p_t, sim_t, emb_t, pred = vote["proba"], vote["similarity"], vote["embedding"], vote["predicted"]
    classes = list(model.classes_)
    codes = model.source_codes_
    emb_s = model.source_embedding_

    p_s, sim_s = model._vote(emb_s, progress=False, exclude_self=True)  # leave-one-out vote on the source
    p_s = _smoothed(p_s, None if src_coords is None else src_coords[labelled], smooth)
    correct_s = (p_s.argmax(axis=1) == codes).astype(float)

    # correctness of a source spot as a function of its similarity to its neighbours, applied to the target
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(sim_s, correct_s)
    expected = expected_macro_f1(p_t, iso.predict(sim_t))
    coverage = float(sim_t.mean() - sim_s.mean())
    by_class = class_coverage(p_t.argmax(axis=1), sim_t, codes, sim_s)
    w = normalize_weights(
        kliep_weights(emb_s.astype(np.float64), emb_t.astype(np.float64), n_centers=100, seed=seed), 20.0
    )
    genes = source.var_names.intersection(target.var_names)
    shared = [
        sparse.csr_matrix(_validate.get_counts(a, layer, n))[:, a.var_names.get_indexer(genes)]
        for a, n in ((source, "source"), (target, "target"))
    ]
    target_sum = count_target(shared)
    markers = marker_auc(
        log_normalize(shared[0], target_sum)[labelled], codes, log_normalize(shared[1], target_sum), p_t.argmax(axis=1)
    )
    K = len(classes)
    by_coverage = float(expected * np.exp(COVERAGE_WEIGHT * by_class))
    scores = {
        "score": by_coverage * markers,
        "coverage_score": by_coverage,
        "marker_auc": markers,
        "expected_f1": expected,
        "class_coverage": by_class,
        "coverage": coverage,
        "score_global": float(expected * np.exp(coverage)),
        "source_f1": float(f1_score(codes, p_s.argmax(axis=1), average="macro")),
        "iw_source_accuracy": float(np.average(correct_s, weights=w)),
        "confidence": float(p_t.max(axis=1).mean()),
        "entropy": float((_entropy(p_t) / np.log(K)).mean()),
        "snd": soft_neighborhood_density(p_t),
        "mmd2": float(
            mmd_test(emb_s.astype(np.float64), emb_t.astype(np.float64), estimator="linear", seed=seed)["mmd2"]
        )
        if min(len(emb_s), len(emb_t)) >= 4
        else float("nan"),
    }
    out: dict[str, Any] = {"scores": scores, "classes": classes, "predicted": pred}
    if known is not None:
        mask = known.notna().to_numpy()
        truth = known[mask].to_numpy()
        transfer_f1 = float(f1_score(truth, pred[mask], average="macro", labels=sorted(set(truth))))
        own_f1 = _target_only_f1(emb_t[mask], truth, seed=seed)
        out.update(transfer_f1=transfer_f1, target_only_f1=own_f1, n_target_labels=int(mask.sum()))
        negative = own_f1 > transfer_f1
        out["verdict"] = (
            f"negative transfer likely: macro-F1 on the {int(mask.sum())} labelled target spots is"
            f" {transfer_f1:.3f} with the transfer and {own_f1:.3f} when training on them alone (cross-validated)"
            if negative
            else f"transfer helps: macro-F1 {transfer_f1:.3f} on the labelled target spots vs {own_f1:.3f} training"
            " on them alone (cross-validated)"
        )
    else:
        negative = scores["score"] < min_score
        out["verdict"] = (
            f"negative transfer likely: score {scores['score']:.3f} < min_score {min_score}"
            if negative
            else f"transfer plausible: score {scores['score']:.3f} >= min_score {min_score}"
        )
    out["negative_transfer"] = bool(negative)
    return out


def _target_labels(target: AnnData, key: str, exclude: Sequence[str]) -> pd.Series:
    if key not in target.obs:
        msg = f"`target.obs[{key!r}]` not found (obs columns: {list(target.obs.columns)}): pass `target_label_key=`."
        raise KeyError(msg)
    lab = target.obs[key]
    lab = lab.astype(object).where(lab.notna(), None).map(lambda v: None if v is None else str(v))
    lab = lab.where(~lab.isin([str(e) for e in exclude]), None)
    n = int(lab.notna().sum())
    counts = lab.value_counts()
    if n < MIN_TARGET_LABELS or len(counts) < 2:
        msg = (
            f"`target.obs[{key!r}]` has {n} usable labels in {len(counts)} class(es): comparing with target-only"
            f" training needs at least {MIN_TARGET_LABELS} labels in two classes. Label more spots or pass"
            " `target_label_key=None`."
        )
        raise ValueError(msg)
    return lab


def _target_only_f1(X: np.ndarray, y: np.ndarray, *, seed: int) -> float:
    """Cross-validated macro-F1 of a class-balanced logistic regression trained on the labelled target spots."""
    n_min = int(pd.Series(y).value_counts().min())
    if n_min >= 2:
        cv = StratifiedKFold(n_splits=min(5, n_min), shuffle=True, random_state=seed)
    else:  # a class with one labelled spot cannot be stratified; it is rarely predicted right
        cv = KFold(n_splits=min(5, len(y)), shuffle=True, random_state=seed)
    pred = np.empty(len(y), dtype=object)
    for train, test in cv.split(X, y):
        if len(set(y[train])) < 2:
            pred[test] = y[train][0]
            continue
        clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit(X[train], y[train])
        pred[test] = clf.predict(X[test])
    return float(f1_score(y, pred.astype(str), average="macro", labels=sorted(set(y))))


def _named(sections: Mapping[str, AnnData] | Sequence[AnnData], what: str) -> tuple[list[str], list[AnnData]]:
    """Names and AnnData of a dict ``name -> AnnData`` or a list (named ``"0"``, ``"1"``...), validated."""
    if isinstance(sections, Mapping):
        names, items = [str(k) for k in sections], list(sections.values())
    elif isinstance(sections, Sequence) and not isinstance(sections, str):
        names, items = [str(i) for i in range(len(sections))], list(sections)
    else:
        msg = f"`{what}` must be a dict of AnnData or a list of AnnData, got {type(sections).__name__}."
        raise TypeError(msg)
    for name, ad in zip(names, items, strict=True):
        _validate.check_adata(ad, f"{what}[{name!r}]")
    return names, items


def _check_common(n_neighbors: int, smooth: float, min_score: float) -> None:
    if int(n_neighbors) < 1:
        msg = f"`n_neighbors` must be a positive integer, got {n_neighbors!r}."
        raise ValueError(msg)
    if not 0 <= smooth < 1:
        msg = f"`smooth` must lie in [0, 1), got {smooth!r}."
        raise ValueError(msg)
    if not np.isfinite(min_score):
        msg = f"`min_score` must be a finite number, got {min_score!r}."
        raise ValueError(msg)


@inject_docs
def transferability(
    source: AnnData,
    target: AnnData,
    /,
    *,
    label_key: str,
    exclude: Sequence[str] = (),
    target_label_key: str | None = None,
    references: Mapping[str, AnnData] | Sequence[AnnData] | None = None,
    layer: str | None = None,
    n_genes: int = 3000,
    n_comps: int = 30,
    n_neighbors: int = 15,
    smooth: float = DEFAULT_SMOOTH,
    spatial_key: str | None = _keys.SPATIAL,
    min_score: float = MIN_SCORE,
    min_shared_genes: int = _validate.MIN_SHARED_GENES,
    warn: bool = True,
    key_added: str = _keys.TRANSFERABILITY,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Score how well labels from ``source`` will transfer to ``target``, without target labels.

    Runs the knn transfer of :func:`sptl.tl.transfer_labels` (``method="knn"``) and, beside it, a
    leave-one-out vote on the source itself, then scores the transfer:

    - ``score``: ``expected_f1 * exp(5 * class_coverage) * marker_auc``, the headline score (higher is
      better),
    - ``coverage_score``: ``expected_f1 * exp(5 * class_coverage)``, the headline of the previous version,
    - ``marker_auc``: do the target spots given a class carry that class's source marker genes? For
      each class predicted for at least 2% of the target, the ROC AUC of the mean target z-score of the
      class's 100 top source markers (Wilcoxon, class vs rest, on the source) between the spots given
      the class and the others, averaged over those classes (0.5 = chance). It catches a target tissue
      called after a source class whose markers it lacks,
    - ``expected_f1``: macro-F1 expected on the target when a spot's label is right as often as
      that of source spots equally similar to their source neighbours (isotonic fit on the source's
      leave-one-out vote),
    - ``class_coverage``: for each class predicted for at least 2% of the target, the mean similarity
      of the target spots given that class to their nearest source spots minus that of the class's
      source spots to their (other) nearest source spots, averaged over those classes (as macro-F1
      averages over classes); negative when the target lies off the source,
    - ``coverage``: the same over all spots at once (not per class),
    - ``score_global``: ``expected_f1 * exp(coverage)``, the headline score of an earlier version,
    - ``source_f1``: leave-one-out macro-F1 of the vote on the source,
    - ``iw_source_accuracy``: leave-one-out source accuracy weighted by importance weights (KLIEP),
      an estimate of the target accuracy under covariate shift,
    - ``confidence``, ``entropy`` (normalised to [0, 1]) of the target's class probabilities,
    - ``snd``: soft neighbourhood density of the target's class probabilities (Saito et al. 2021),
    - ``mmd2``: linear-time MMD between source and target in the joint embedding.

    With ``references`` (other labelled sections that could serve as source), each reference's
    labels are transferred to the target as well and two committee scores are added:

    - ``agreement``: the transfer's accuracy estimated, without target labels, from how often the
      transfers of ``source`` and the references agree pairwise (Platanios et al. 2014: two transfers
      that err independently agree on a spot with probability ``acc_i * acc_j``; all pairs give every
      ``acc`` by least squares),
    - ``committee_score``: ``score * agreement``.

    With ``target_label_key`` (a few labelled target spots), the transfer's macro-F1 on those spots is
    compared with a logistic regression trained on them alone (cross-validated); negative transfer is
    flagged when training on the target alone does better. Without it, when ``score < min_score``.
    A flagged transfer raises a :class:`sptl.tl.NegativeTransferWarning`.

    Parameters
    ----------
    source
        Labelled source section (raw counts in ``.X`` or ``layers[layer]``, labels in ``obs[label_key]``).
    {target}
    label_key
        Column of ``source.obs`` with the labels to transfer.
    exclude
        Source (and target) labels to ignore, for example ``["undetermined"]``.
    target_label_key
        Column of ``target.obs`` holding a few known labels (missing elsewhere), to compare the transfer
        with training on the target alone. Needs at least 5 labels in two classes.
    references
        Other labelled source sections (a dict ``name -> AnnData`` or a list, at least two, labels in
        ``obs[label_key]``) whose transfers to ``target`` form the committee of ``agreement``. Each one
        costs a transfer.
    {layer}
    n_genes
        Number of highly variable genes of the joint embedding.
    n_comps
        Number of principal components of the joint embedding.
    n_neighbors
        Number of source neighbours that vote.
    smooth
        Weight of the spatial neighbours in the label spreading that finishes the transfer, as in
        :func:`sptl.tl.transfer_labels`; ``0`` turns it off.
    spatial_key
        Key in ``.obsm`` with the coordinates used for smoothing; ``None`` turns smoothing off.
    min_score
        Without target labels, a ``score`` below this flags negative transfer. With the default 0.35, 13
        of the 14 HER2ST cross-patient transfers flagged did worse than a logistic regression on 5% of
        the target's labels (``benchmarks/diagnostics.py``; 0.35 was picked on those same 30 pairs, and
        a threshold picked on the other targets is right for 80% of a held-out target's pairs); 7 of the
        16 unflagged ones did worse too, so no warning is no guarantee.
    min_shared_genes
        Fewest genes source and target must share.
    warn
        Raise a :class:`sptl.tl.NegativeTransferWarning` when negative transfer is likely.
    {key_added}
    {seed}
    {copy}

    Returns
    -------
    ``None``, or the annotated copy of ``target`` if ``copy=True``. Written to ``target.uns[key_added]``:

    - ``scores``: dict of the scores above (``agreement`` and ``committee_score`` only with ``references``),
    - ``negative_transfer``: whether negative transfer is likely, and ``verdict``: a sentence saying why,
    - with ``target_label_key``: ``transfer_f1``, ``target_only_f1``, ``n_target_labels``,
    - ``classes`` (source classes) and ``params``.

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> sptl.tl.transferability(source, target, label_key="label", exclude=["undetermined"])
    >>> result = target.uns["sptl_transferability"]
    >>> sorted(result["scores"])[:3]
    ['class_coverage', 'confidence', 'coverage']
    >>> result["negative_transfer"]
    False
    """
    start = perf_counter()
    _validate.check_adata(source, "source")
    _validate.check_adata(target, "target")
    ref_names: list[str] = []
    ref_items: list[AnnData] = []
    if references is not None:
        ref_names, ref_items = _named(references, "references")
        if len(ref_items) < MIN_COMMITTEE - 1:
            msg = (
                f"`references` has {len(ref_items)} section(s): the agreement of the transfers needs at least"
                f" {MIN_COMMITTEE - 1} other sources besides `source`. Pass more or `references=None`."
            )
            raise ValueError(msg)
    _check_common(n_neighbors, smooth, min_score)
    common = {
        "label_key": label_key,
        "exclude": exclude,
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "n_neighbors": n_neighbors,
        "smooth": smooth,
        "spatial_key": spatial_key,
        "min_shared_genes": min_shared_genes,
        "seed": seed,
    }
    params = {
        **common,
        "exclude": list(exclude),
        "min_score": min_score,
        "target_label_key": target_label_key,
        "references": ref_names or None,
    }
    logg.info(f"scoring the transfer of `{label_key}` from {source.n_obs} source spots to {target.n_obs} target spots")
    result = assess(source, target, target_label_key=target_label_key, min_score=min_score, **common)
    preds = [result.pop("predicted")]
    for name, ad in zip(ref_names, ref_items, strict=True):
        try:
            preds.append(_knn_transfer(ad, target, **common)["predicted"])
        except (KeyError, ValueError, TypeError) as e:
            msg = f"Reference {name!r}: {e}"
            raise type(e)(msg) from e
    if ref_items:
        agreement = float(agreement_accuracy(preds)[0])
        result["scores"].update(agreement=agreement, committee_score=result["scores"]["score"] * agreement)
    adata = target.copy() if copy else target
    adata.uns[key_added] = {**result, "params": params}
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    'uns[{key_added!r}]'")
    if warn and result["negative_transfer"]:
        warnings.warn(f"{result['verdict']}.", NegativeTransferWarning, stacklevel=2)
    return adata if copy else None


@inject_docs
def rank_sources(
    candidates: Mapping[str, AnnData] | Sequence[AnnData],
    target: AnnData,
    /,
    *,
    label_key: str,
    exclude: Sequence[str] = (),
    by: str = "score",
    layer: str | None = None,
    n_genes: int = 3000,
    n_comps: int = 30,
    n_neighbors: int = 15,
    smooth: float = DEFAULT_SMOOTH,
    spatial_key: str | None = _keys.SPATIAL,
    min_score: float = MIN_SCORE,
    min_shared_genes: int = _validate.MIN_SHARED_GENES,
    warn: bool = True,
    key_added: str = _keys.RANK_SOURCES,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Order candidate source sections by how well their labels should transfer to ``target``.

    Every candidate is scored as in :func:`sptl.tl.transferability` (no target labels needed) and
    the candidates are ranked by ``by``. With three or more candidates, their transfers also form a
    committee: ``agreement`` estimates each transfer's accuracy from how often it agrees with the
    others (Platanios et al. 2014, as in :func:`sptl.tl.transferability`) and ``committee_score`` is
    ``score * agreement``. On the 30 cross-patient HER2ST pairs (``benchmarks/diagnostics.py``)
    ``score`` correlates better with the real macro-F1 than ``committee_score`` (Spearman 0.64 vs
    0.61; 0.62 vs 0.57 within a target) and picks the best source more often (5 vs 3 of 6 targets),
    so it is the default.

    Parameters
    ----------
    candidates
        Labelled source sections: a dict ``name -> AnnData`` or a list (named ``"0"``, ``"1"``...).
    {target}
    label_key
        Column of every candidate's ``.obs`` with the labels.
    exclude
        Labels to ignore, for example ``["undetermined"]``.
    by
        Score to rank by (see :func:`sptl.tl.transferability`): ``"score"``, ``"coverage_score"``,
        ``"marker_auc"``, ``"expected_f1"``, ``"class_coverage"``, ``"coverage"``, ``"score_global"``,
        ``"source_f1"``, ``"iw_source_accuracy"``, ``"confidence"``, ``"entropy"``, ``"snd"`` or ``"mmd2"``
        (``entropy`` and ``mmd2`` rank low values first); with at least three candidates also
        ``"agreement"`` or ``"committee_score"``.
    {layer}
    n_genes
        Number of highly variable genes of each joint embedding.
    n_comps
        Number of principal components of each joint embedding.
    n_neighbors
        Number of source neighbours that vote.
    smooth
        Weight of the spatial neighbours in label spreading, as in :func:`sptl.tl.transfer_labels`.
    spatial_key
        Key in ``.obsm`` with the coordinates used for smoothing; ``None`` turns smoothing off.
    min_score
        A best candidate whose ``score`` is below this flags negative transfer.
    min_shared_genes
        Fewest genes each candidate and the target must share.
    warn
        Raise a :class:`sptl.tl.NegativeTransferWarning` when even the best candidate is flagged.
    {key_added}
    {seed}
    {copy}

    Returns
    -------
    ``None``, or the annotated copy of ``target`` if ``copy=True``. Written to ``target.uns[key_added]``:

    - ``ranking``: DataFrame, one row per candidate (best first), one column per score (``agreement``
      and ``committee_score`` are NaN with fewer than three candidates) plus ``negative_transfer``,
    - ``best``: name of the best candidate, and ``params``.

    Examples
    --------
    >>> import sptl
    >>> target = sptl.datasets.her2st("D1")
    >>> candidates = {s: sptl.datasets.her2st(s) for s in ("B1", "F1")}
    >>> sptl.tl.rank_sources(candidates, target, label_key="label", exclude=["undetermined"])
    >>> target.uns["sptl_sources"]["best"]
    'F1'
    """
    start = perf_counter()
    names, items = _named(candidates, "candidates")
    if not items:
        msg = "`candidates` is empty: pass at least one labelled source section."
        raise ValueError(msg)
    _validate.check_adata(target, "target")
    _validate.check_choice(by, "by", [*SCORES, *COMMITTEE_SCORES])
    if by in COMMITTEE_SCORES and len(items) < MIN_COMMITTEE:
        msg = (
            f"`by={by!r}` needs at least {MIN_COMMITTEE} candidates (their transfers' agreement), got {len(items)}:"
            " pass more candidates or rank `by='score'`."
        )
        raise ValueError(msg)
    _check_common(n_neighbors, smooth, min_score)
    common = {
        "label_key": label_key,
        "exclude": exclude,
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "n_neighbors": n_neighbors,
        "smooth": smooth,
        "spatial_key": spatial_key,
        "min_shared_genes": min_shared_genes,
        "seed": seed,
    }
    params = {**common, "exclude": list(exclude), "by": by, "min_score": min_score, "candidates": names}
    logg.info(f"ranking {len(items)} candidate sources for {target.n_obs} target spots by `{by}`")
    rows, preds = [], []
    for name, ad in zip(names, items, strict=True):
        try:
            res = assess(ad, target, target_label_key=None, min_score=min_score, **common)
        except (KeyError, ValueError, TypeError) as e:
            msg = f"Candidate {name!r}: {e}"
            raise type(e)(msg) from e
        preds.append(res["predicted"])
        rows.append({"source": name, **res["scores"], "negative_transfer": res["negative_transfer"]})
    ranking = pd.DataFrame(rows).set_index("source")
    agreement = committee = np.full(len(rows), np.nan)
    if len(rows) >= MIN_COMMITTEE:
        agreement = agreement_accuracy(preds)
        committee = ranking["score"].to_numpy() * agreement
    ranking.insert(ranking.columns.get_loc("negative_transfer"), "agreement", agreement)
    ranking.insert(ranking.columns.get_loc("negative_transfer"), "committee_score", committee)
    ranking = ranking.sort_values(by, ascending=by in LOWER_IS_BETTER, kind="stable")
    best = str(ranking.index[0])
    adata = target.copy() if copy else target
    adata.uns[key_added] = {"ranking": ranking, "best": best, "params": params}
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    'uns[{key_added!r}]'")
    if warn and bool(ranking["negative_transfer"].iloc[0]):
        warnings.warn(
            f"Even the best candidate {best!r} has score {ranking['score'].iloc[0]:.3f} < min_score {min_score}:"
            " negative transfer is likely from every candidate.",
            NegativeTransferWarning,
            stacklevel=2,
        )
    return adata if copy else None
