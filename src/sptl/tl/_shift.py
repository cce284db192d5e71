"""How far a target section lies from a source: kernel MMD, proxy A-distance, per-gene shift."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse, stats
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from .. import _keys, _validate
from .._docs import inject_docs
from .._progress import progress_bar
from ..pp._expression import count_target, fit_pca_space, log_normalize

ESTIMATORS = ("auto", "exact", "linear")
#: Above this many spots (source + target) ``estimator="auto"`` uses the linear-time MMD.
MAX_EXACT = 5000
#: Bandwidths of the Gaussian kernel mixture, as multiples of the median squared distance.
BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


# -- features ----------------------------------------------------------------------------------------
def section_features(
    adatas: Sequence[AnnData],
    names: Sequence[str],
    *,
    use_rep: str | None,
    layer: str | None,
    n_genes: int,
    n_comps: int,
    n_sources: int,
    min_shared_genes: int,
    seed: int,
) -> list[np.ndarray]:
    """One feature matrix per section, in a space where sections can be compared.

    ``use_rep=None``: the joint PCA space the transfer models use (shared genes, highly variable
    genes of the first ``n_sources`` sections, per-section z-scores, joint PCA). Otherwise
    ``obsm[use_rep]`` of every section, as is. Raises a ValueError for constant or empty features.
    """
    if use_rep is not None:
        feats = []
        for ad, name in zip(adatas, names, strict=True):
            if use_rep not in ad.obsm:
                msg = f"`{name}.obsm[{use_rep!r}]` not found (obsm keys: {list(ad.obsm)}): pass `use_rep=`."
                raise KeyError(msg)
            x = ad.obsm[use_rep]
            x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)
            if x.ndim != 2 or x.shape[1] == 0:
                msg = f"`{name}.obsm[{use_rep!r}]` has shape {x.shape}, expected ({ad.n_obs}, n_features >= 1)."
                raise ValueError(msg)
            if not np.isfinite(x).all():
                msg = f"`{name}.obsm[{use_rep!r}]` holds NaN or infinite values."
                raise ValueError(msg)
            feats.append(x)
        dims = {f.shape[1] for f in feats}
        if len(dims) > 1:
            sizes = ", ".join(f"{n}: {f.shape[1]}" for n, f in zip(names, feats, strict=True))
            msg = f"`obsm[{use_rep!r}]` has different widths across sections ({sizes}): use one shared embedding."
            raise ValueError(msg)
        pooled = np.vstack(feats)
        if np.ptp(pooled, axis=0).max() == 0:
            msg = f"`obsm[{use_rep!r}]` is constant across all spots: it cannot tell sections apart."
            raise ValueError(msg)
        return feats
    counts = [_validate.get_counts(a, layer, n) for a, n in zip(adatas, names, strict=True)]
    genes = _validate.shared_genes(adatas, names, min_shared_genes)
    for ad, X, name in zip(adatas, counts, names, strict=True):
        sub = sparse.csr_matrix(X)[:, ad.var_names.get_indexer(genes)]
        if sub.shape[0] < 2 or _n_varying(sub) == 0:
            msg = (
                f"`{name}` has constant expression on the {len(genes)} shared genes ({sub.shape[0]} spots):"
                " there is nothing to compare."
            )
            raise ValueError(msg)
    _, _, pcs, _ = fit_pca_space(
        adatas, counts, genes=genes, n_sources=n_sources, n_genes=n_genes, n_comps=n_comps, seed=seed
    )
    return [p.astype(np.float64) for p in pcs]


def _n_varying(X: sparse.csr_matrix) -> int:
    """Number of columns of ``X`` that are not constant."""
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
    return int((sq - mean**2 > 1e-12).sum())


# -- MMD -----------------------------------------------------------------------------------------------
def median_bandwidth(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, max_n: int = 1000) -> float:
    """Median squared distance between pooled points (subsampled), the kernel's scale."""
    z = np.vstack([x, y])
    if len(z) > max_n:
        z = z[rng.choice(len(z), max_n, replace=False)]
    d = _sqdist(z, z)
    med = float(np.median(d[np.triu_indices(len(z), k=1)]))
    return max(med, 1e-12)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """Mean of Gaussian kernels with scales ``BANDWIDTHS x bandwidth`` (``k(x, x) = 1``)."""
    d = _sqdist(a, b)
    return sum(np.exp(-d / (bandwidth * s)) for s in BANDWIDTHS) / len(BANDWIDTHS)


def _rowwise_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    d = ((a - b) ** 2).sum(1)
    return sum(np.exp(-d / (bandwidth * s)) for s in BANDWIDTHS) / len(BANDWIDTHS)


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    estimator: str = "auto",
    n_permutations: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Squared MMD between samples ``x`` and ``y`` with a p-value.

    ``"exact"``: unbiased U-statistic over all pairs, p-value from ``n_permutations`` label
    permutations (quadratic cost). ``"linear"``: the linear-time estimator of Gretton et al. (2012)
    over disjoint pairs, p-value from its asymptotic normal distribution. ``"auto"`` picks ``"exact"``
    up to ``MAX_EXACT`` points.
    """
    rng = np.random.default_rng(seed)
    n, m = len(x), len(y)
    if estimator == "auto":
        estimator = "exact" if n + m <= MAX_EXACT else "linear"
    bw = median_bandwidth(x, y, rng)
    if estimator == "linear":
        k = min(n, m) // 2
        if k < 2:
            msg = f"The linear-time MMD needs at least 4 spots on each side, got {n} and {m}."
            raise ValueError(msg)
        xs, ys = x[rng.permutation(n)[: 2 * k]], y[rng.permutation(m)[: 2 * k]]
        x1, x2, y1, y2 = xs[0::2], xs[1::2], ys[0::2], ys[1::2]
        h = (
            _rowwise_kernel(x1, x2, bw)
            + _rowwise_kernel(y1, y2, bw)
            - _rowwise_kernel(x1, y2, bw)
            - _rowwise_kernel(x2, y1, bw)
        )
        value = float(h.mean())
        se = float(h.std(ddof=1) / np.sqrt(k))
        p = float(stats.norm.sf(value / se)) if se > 0 else (0.0 if value > 0 else 1.0)
        return {"mmd2": value, "p_value": p, "estimator": "linear", "bandwidth": bw, "null": np.zeros(0)}
    z = np.vstack([x, y]).astype(np.float64)
    K = gaussian_kernel(z, z, bw)
    N = n + m
    diag = np.diag(K).copy()

    def stat(A: np.ndarray) -> np.ndarray:
        """MMD^2 for each column of the 0/1 membership matrix ``A`` (1 = first sample)."""
        KA = K @ A
        B = 1.0 - A
        KB = K.sum(1, keepdims=True) - KA
        aKa = (A * KA).sum(0) - diag @ A
        bKb = (B * KB).sum(0) - diag @ B
        aKb = (A * KB).sum(0)
        return aKa / (n * (n - 1)) + bKb / (m * (m - 1)) - 2 * aKb / (n * m)

    observed = float(stat(np.r_[np.ones(n), np.zeros(m)][:, None])[0])
    null = []
    chunk = 50
    starts = range(0, n_permutations, chunk)
    for s in progress_bar(starts, enabled=progress, desc="MMD permutations", total=len(starts)):
        size = min(chunk, n_permutations - s)
        A = np.zeros((N, size))
        for j in range(size):
            A[rng.permutation(N)[:n], j] = 1.0
        null.append(stat(A))
    null = np.concatenate(null) if null else np.zeros(0)
    p = float((1 + (null >= observed).sum()) / (1 + len(null)))
    return {"mmd2": observed, "p_value": p, "estimator": "exact", "bandwidth": bw, "null": null}


# -- domain classifier -------------------------------------------------------------------------------
def domain_probabilities(x: np.ndarray, y: np.ndarray, *, seed: int, n_folds: int = 5) -> np.ndarray:
    """Cross-fitted probability that each spot of ``x`` then ``y`` belongs to ``y`` (random forest)."""
    z = np.vstack([x, y])
    d = np.r_[np.zeros(len(x), dtype=int), np.ones(len(y), dtype=int)]
    folds = min(n_folds, len(x), len(y))
    if folds < 2:
        msg = f"A domain classifier needs at least 2 spots on each side, got {len(x)} and {len(y)}."
        raise ValueError(msg)
    clf = RandomForestClassifier(
        n_estimators=50, min_samples_leaf=5, class_weight="balanced", random_state=seed, n_jobs=1
    )
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(clf, z, d, cv=cv, method="predict_proba")[:, 1]


def proxy_a_distance(x: np.ndarray, y: np.ndarray, *, seed: int) -> tuple[float, float, np.ndarray]:
    """Proxy A-distance ``2 (1 - 2 err)`` of a cross-validated domain classifier (balanced error).

    Returns the distance (clipped to ``[0, 2]``), the classifier's balanced accuracy and the
    cross-fitted probabilities of belonging to ``y``.
    """
    prob = domain_probabilities(x, y, seed=seed)
    pred = prob > 0.5
    err = 0.5 * (pred[: len(x)].mean() + (~pred[len(x) :]).mean())
    return float(np.clip(2 * (1 - 2 * err), 0, 2)), float(1 - err), prob


# -- genes -------------------------------------------------------------------------------------------
def gene_shift(
    adatas: Sequence[AnnData], counts: Sequence[np.ndarray | sparse.spmatrix], genes: pd.Index
) -> pd.DataFrame:
    """Per-gene shift of the second section against the first, on log-normalised shared genes.

    Columns: ``mean_source``, ``mean_target`` (log-expression as sptl normalises it),
    ``smd`` (standardised mean difference, target minus source, over the pooled standard deviation),
    ``frac_source``, ``frac_target``
    (fraction of spots detecting the gene); rows sorted by ``|smd|``, largest first.
    """
    shared = [sparse.csr_matrix(X)[:, ad.var_names.get_indexer(genes)] for ad, X in zip(adatas, counts, strict=True)]
    target_sum = count_target(shared)
    stats_ = []
    for L in (log_normalize(X, target_sum) for X in shared):
        mean = np.asarray(L.mean(axis=0)).ravel()
        var = np.asarray(L.multiply(L).mean(axis=0)).ravel() - mean**2
        frac = np.asarray((L > 0).mean(axis=0)).ravel()
        stats_.append((mean, np.maximum(var, 0), frac))
    (m0, v0, f0), (m1, v1, f1) = stats_
    sd = np.sqrt((v0 + v1) / 2)
    smd = np.where(sd > 0, (m1 - m0) / np.maximum(sd, 1e-12), 0.0)
    df = pd.DataFrame(
        {"mean_source": m0, "mean_target": m1, "smd": smd, "frac_source": f0, "frac_target": f1},
        index=pd.Index(genes, name="gene"),
    ).astype(np.float32)
    df = df[(df["frac_source"] > 0) | (df["frac_target"] > 0)]
    return df.iloc[np.argsort(-np.abs(df["smd"].to_numpy()), kind="stable")]


def _pair(
    x: np.ndarray, y: np.ndarray, *, estimator: str, n_permutations: int, seed: int, progress: bool
) -> dict[str, Any]:
    res = mmd_test(x, y, estimator=estimator, n_permutations=n_permutations, seed=seed, progress=progress)
    pad, acc, _ = proxy_a_distance(x, y, seed=seed)
    return {**res, "a_distance": pad, "domain_accuracy": acc}


@inject_docs
def domain_shift(
    source: AnnData,
    target: AnnData | None = None,
    /,
    *,
    batch_key: str | None = None,
    use_rep: str | None = None,
    layer: str | None = None,
    n_genes: int = 2000,
    n_comps: int = 30,
    estimator: str = "auto",
    n_permutations: int = 200,
    n_top_genes: int = 100,
    min_shared_genes: int = _validate.MIN_SHARED_GENES,
    key_added: str = _keys.SHIFT,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Measure the distribution shift between a source and a target section.

    Three views of the shift: the squared maximum mean discrepancy (MMD) with a Gaussian kernel
    mixture and a p-value, the proxy A-distance of a cross-validated domain classifier (random
    forest; 0 = indistinguishable, 2 = perfectly separable), and a ranking of the genes whose mean
    expression differs most. The MMD and the classifier work in the joint space the transfer uses:
    shared genes, highly variable genes, per-section z-scores and a joint PCA, so they measure
    differences of tissue composition rather than section-wide offsets; ``use_rep`` uses an embedding
    of your own instead. With one AnnData and ``batch_key``, every pair of batches is compared.

    Parameters
    ----------
    source
        Source section (raw counts in ``.X`` or ``layers[layer]``), or one AnnData holding several
        sections split by ``batch_key``.
    target
        Target section; results are written into it. ``None`` with ``batch_key``.
    batch_key
        Column of ``source.obs`` naming the sections to compare pairwise (only without ``target``).
    use_rep
        Key in ``.obsm`` of both sections with a shared embedding to compare instead of the joint PCA.
    {layer}
    n_genes
        Number of highly variable genes of the joint PCA.
    n_comps
        Number of principal components of the joint PCA.
    estimator
        ``"exact"``: unbiased MMD over all pairs of spots, p-value from label permutations;
        ``"linear"``: linear-time MMD (Gretton et al. 2012), p-value from its normal approximation;
        ``"auto"``: ``"exact"`` up to 5000 spots in total, else ``"linear"``.
    n_permutations
        Number of permutations of the exact test.
    n_top_genes
        Number of most shifted genes kept in the ranking.
    min_shared_genes
        Fewest genes the sections must share.
    {key_added}
    {seed}
    {progress}
    copy
        If ``True``, work on a copy of the AnnData receiving the results (``target``, or ``source``
        with ``batch_key``) and return it; if ``False``, write into it and return ``None``.

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written to ``uns[key_added]`` of the target:

    - ``mmd2``, ``p_value``, ``estimator``, ``bandwidth`` (median squared distance), ``null`` (the
      permutation values of the exact test),
    - ``a_distance`` and ``domain_accuracy`` (balanced accuracy of the domain classifier),
    - ``genes``: DataFrame of the ``n_top_genes`` most shifted genes (``mean_source``,
      ``mean_target``, ``smd``: standardised mean difference target minus source, ``frac_source``,
      ``frac_target``), ranked by ``|smd|``; empty with ``use_rep``,
    - ``params``.

    With ``batch_key`` the AnnData gets ``mmd2``, ``p_value`` and ``a_distance`` as batch x batch
    DataFrames, ``genes`` with one ``smd`` column per batch (each batch against all others), and
    ``params``.

    Examples
    --------
    >>> import sptl
    >>> a1, a2, b1 = sptl.datasets.her2st("A1"), sptl.datasets.her2st("A2"), sptl.datasets.her2st("B1")
    >>> sptl.tl.domain_shift(a1, a2, n_permutations=50, progress=False)
    >>> sptl.tl.domain_shift(a1, b1, n_permutations=50, progress=False)
    >>> a2.uns["sptl_shift"]["mmd2"] < b1.uns["sptl_shift"]["mmd2"]
    True
    """
    start = perf_counter()
    _validate.check_choice(estimator, "estimator", ESTIMATORS)
    for name, value in (("n_genes", n_genes), ("n_comps", n_comps), ("n_permutations", n_permutations)):
        if int(value) < 1:
            msg = f"`{name}` must be a positive integer, got {value!r}."
            raise ValueError(msg)
    _validate.check_adata(source, "source")
    if target is not None:
        if batch_key is not None:
            msg = "Pass either a `target` or a `batch_key` (to compare the batches of `source`), not both."
            raise ValueError(msg)
        _validate.check_adata(target, "target")
        sections, names = [source, target], ["source", "target"]
    else:
        if batch_key is None:
            msg = "Pass a `target` AnnData, or a `batch_key` naming the sections of `source` to compare."
            raise ValueError(msg)
        sections = _validate.split_batches([source], batch_key, "source")
        names = [str(b) for b in pd.unique(source.obs[batch_key].dropna())]
        if len(sections) < 2:
            msg = f"`source.obs[{batch_key!r}]` has {len(sections)} batch(es): comparing needs at least two."
            raise ValueError(msg)
    params = {
        "batch_key": batch_key,
        "use_rep": use_rep,
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "estimator": estimator,
        "n_permutations": n_permutations,
        "n_top_genes": n_top_genes,
        "min_shared_genes": min_shared_genes,
        "seed": seed,
    }
    where = [f"source.obs[{batch_key!r}] == {n!r}" for n in names] if target is None else names
    feats = section_features(
        sections,
        where,
        use_rep=use_rep,
        layer=layer,
        n_genes=n_genes,
        n_comps=n_comps,
        n_sources=len(sections),
        min_shared_genes=min_shared_genes,
        seed=seed,
    )
    if use_rep is None:
        counts = [_validate.get_counts(a, layer, n) for a, n in zip(sections, where, strict=True)]
        genes = _validate.shared_genes(sections, where, min_shared_genes)
    logg.info(f"measuring the domain shift between {len(sections)} sections ({', '.join(names)})")

    if target is not None:
        res = _pair(
            feats[0], feats[1], estimator=estimator, n_permutations=n_permutations, seed=seed, progress=progress
        )
        if use_rep is None:
            gdf = gene_shift(sections, counts, genes).iloc[:n_top_genes]
        else:
            gdf = pd.DataFrame(columns=["mean_source", "mean_target", "smd", "frac_source", "frac_target"])
        result = {**res, "genes": gdf, "params": params}
        receiver = target
    else:
        k = len(sections)
        mats = {key: np.zeros((k, k)) for key in ("mmd2", "p_value", "a_distance")}
        for i, j in itertools.combinations(range(k), 2):
            res = _pair(
                feats[i], feats[j], estimator=estimator, n_permutations=n_permutations, seed=seed, progress=False
            )
            for key in mats:
                mats[key][i, j] = mats[key][j, i] = res[key]
        np.fill_diagonal(mats["p_value"], 1.0)
        result = {key: pd.DataFrame(v, index=names, columns=names) for key, v in mats.items()}
        if use_rep is None:
            cols = {}
            for i, name in enumerate(names):
                rest = sparse.vstack([sparse.csr_matrix(c) for j, c in enumerate(counts) if j != i])
                # the other batches are rows of the same AnnData, so they share its genes
                cols[name] = gene_shift([sections[i], sections[i]], [rest, counts[i]], genes)["smd"]
            gdf = pd.DataFrame(cols).fillna(0.0)
            gdf = gdf.iloc[np.argsort(-gdf.abs().max(axis=1).to_numpy(), kind="stable")[:n_top_genes]]
        else:
            gdf = pd.DataFrame(columns=names)
        result["genes"] = gdf
        result["params"] = params
        receiver = source

    adata = receiver.copy() if copy else receiver
    adata.uns[key_added] = result
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    'uns[{key_added!r}]'")
    return adata if copy else None
