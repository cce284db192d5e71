"""Importance weights of source spots: how much each one resembles the target (covariate shift)."""

from __future__ import annotations

from time import perf_counter

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy.optimize import minimize

from .. import _keys, _validate
from .._docs import inject_docs
from ._shift import domain_probabilities, gaussian_kernel, median_bandwidth, section_features

METHODS = ("classifier", "kmm", "kliep")
#: Most source spots ``method="kmm"`` accepts (its kernel matrix is quadratic in them).
MAX_KMM = 20000


def classifier_weights(x: np.ndarray, y: np.ndarray, *, seed: int) -> np.ndarray:
    """Density ratio ``p_target / p_source`` at the source spots from a cross-fitted domain classifier."""
    prob = np.clip(domain_probabilities(x, y, seed=seed)[: len(x)], 0.01, 0.99)
    return prob / (1 - prob) * len(x) / len(y)


def kmm_weights(x: np.ndarray, y: np.ndarray, *, bound: float, seed: int) -> np.ndarray:
    """Kernel mean matching (Huang et al. 2007): source weights whose kernel mean matches the target's.

    Minimises ``1/2 b^T K b - kappa^T b`` over ``0 <= b <= bound`` with ``|sum(b) - n| <= n eps``
    (``eps = (sqrt(n) - 1) / sqrt(n)``), the sum constraint as a quadratic penalty (L-BFGS-B).
    """
    rng = np.random.default_rng(seed)
    n, m = len(x), len(y)
    bw = median_bandwidth(x, y, rng)
    K = gaussian_kernel(x, x, bw)
    kappa = (n / m) * gaussian_kernel(x, y, bw).sum(axis=1)
    eps = (np.sqrt(n) - 1) / np.sqrt(n)
    lam = 10.0 * float(np.abs(K).mean())

    def fun(b: np.ndarray) -> tuple[float, np.ndarray]:
        Kb = K @ b
        excess = abs(b.sum() - n) - n * eps
        f = 0.5 * b @ Kb - kappa @ b
        g = Kb - kappa
        if excess > 0:
            f += lam * excess**2
            g = g + 2 * lam * excess * np.sign(b.sum() - n)
        return float(f), g

    res = minimize(fun, np.ones(n), jac=True, method="L-BFGS-B", bounds=[(0.0, bound)] * n, options={"maxiter": 500})
    return np.clip(res.x, 0, bound)


def kliep_weights(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_centers: int,
    seed: int,
    n_iter: int = 200,
    scales: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0),
) -> np.ndarray:
    """KLIEP (Sugiyama et al. 2008): ``w(x) = sum_l alpha_l k(x, c_l)`` over target centres ``c_l``.

    Maximises the target log-likelihood of ``w`` under ``mean_source(w) = 1``, ``alpha >= 0``, by
    projected gradient ascent. The Gaussian kernel's width (``scales`` times the median squared
    distance) is chosen by the likelihood on held-out target spots (2-fold).
    """
    rng = np.random.default_rng(seed)
    med = median_bandwidth(x, y, rng)
    centers = y[rng.choice(len(y), min(n_centers, len(y)), replace=False)]
    half = rng.permutation(len(y))
    folds = [half[: len(y) // 2], half[len(y) // 2 :]]
    best, best_ll = scales[0], -np.inf
    for s in scales:
        ll = 0.0
        for k in range(2):
            alpha = _kliep_fit(_rbf(x, centers, s * med), _rbf(y[folds[k]], centers, s * med), n_iter)
            ll += float(np.log(np.maximum(_rbf(y[folds[1 - k]], centers, s * med) @ alpha, 1e-12)).mean())
        if ll > best_ll:
            best, best_ll = s, ll
    alpha = _kliep_fit(_rbf(x, centers, best * med), _rbf(y, centers, best * med), n_iter)
    return _rbf(x, centers, best * med) @ alpha


def _rbf(a: np.ndarray, b: np.ndarray, width: float) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-np.maximum(d, 0) / width)


def _kliep_fit(Kx: np.ndarray, Ky: np.ndarray, n_iter: int) -> np.ndarray:
    """KLIEP's ``alpha`` from the kernels of source (``Kx``) and target (``Ky``) spots to the centres.

    With ``beta_l = alpha_l * mean_source(k(., c_l))`` the problem is a mixture-weight likelihood on the
    simplex, solved by its EM (multiplicative) update, which increases the likelihood at every step.
    """
    b = np.maximum(Kx.mean(axis=0), 1e-12)
    A = Ky / b
    beta = np.full(A.shape[1], 1.0 / A.shape[1])
    for _ in range(n_iter):
        beta *= (A / np.maximum(A @ beta, 1e-300)[:, None]).mean(axis=0)
    return beta / b


@inject_docs
def instance_weights(
    source: AnnData,
    target: AnnData,
    /,
    *,
    method: str = "classifier",
    batch_key: str | None = None,
    use_rep: str | None = None,
    layer: str | None = None,
    n_genes: int = 3000,
    n_comps: int = 30,
    max_weight: float = 20.0,
    n_centers: int = 100,
    min_shared_genes: int = _validate.MIN_SHARED_GENES,
    key_added: str = _keys.WEIGHT,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Importance weights of source spots for a target section (covariate-shift correction).

    Each source spot gets a weight estimating ``p_target(x) / p_source(x)``: spots that look like
    the target count more, spots unlike anything in the target count less. The spots are compared
    in the joint space the transfer uses (shared genes, source HVGs, per-section z-scores, joint
    PCA), or in ``obsm[use_rep]``. Pass the result to :func:`sptl.tl.transfer_labels` with
    ``weights_key=key_added``.

    Parameters
    ----------
    source
        Source section that receives the weights (raw counts in ``.X`` or ``layers[layer]``).
    {target}
    method
        ``"classifier"``: odds of a cross-fitted domain classifier (random forest);
        ``"kmm"``: kernel mean matching (quadratic in the number of source spots);
        ``"kliep"``: Kullback-Leibler importance estimation with Gaussian kernels on target centres.
    batch_key
        Column of ``source.obs`` that splits the source into sections; each is standardised on its own
        (as :func:`sptl.tl.transfer_labels` does with ``batch_key``).
    use_rep
        Key in ``.obsm`` of both sections with a shared embedding to use instead of the joint PCA.
    {layer}
    n_genes
        Number of highly variable genes (chosen on the source) of the joint PCA.
    n_comps
        Number of principal components of the joint PCA.
    max_weight
        Largest weight allowed (relative to the mean 1), so a few spots cannot dominate; also the
        upper bound of ``"kmm"``.
    n_centers
        Number of target spots used as kernel centres by ``"kliep"``.
    min_shared_genes
        Fewest genes source and target must share.
    {key_added}
    {seed}
    copy
        If ``True``, work on a copy of the source and return it; if ``False``, write into the given
        source and return ``None``.

    Returns
    -------
    ``None``, or the annotated copy of ``source`` if ``copy=True``. Written to the source:

    - ``obs[key_added]``: weight of every spot (float, >= 0, mean 1 over the source),
    - ``uns[key_added]``: ``effective_sample_size`` (``sum(w)^2 / sum(w^2)``) and ``params``.

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> sptl.tl.instance_weights(source, target, method="kliep")
    >>> round(float(source.obs["sptl_weight"].mean()), 6)
    1.0
    """
    start = perf_counter()
    _validate.check_choice(method, "method", METHODS)
    _validate.check_adata(source, "source")
    _validate.check_adata(target, "target")
    if not max_weight > 1:
        msg = f"`max_weight` must be larger than 1 (the mean weight), got {max_weight!r}."
        raise ValueError(msg)
    if method == "kmm" and source.n_obs > MAX_KMM:
        msg = (
            f"`method='kmm'` needs a {source.n_obs} x {source.n_obs} kernel matrix; above {MAX_KMM} source spots"
            " use `method='classifier'` or `method='kliep'`."
        )
        raise ValueError(msg)
    if int(n_centers) < 1:
        msg = f"`n_centers` must be a positive integer, got {n_centers!r}."
        raise ValueError(msg)
    params = {
        "method": method,
        "batch_key": batch_key,
        "use_rep": use_rep,
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "max_weight": max_weight,
        "n_centers": n_centers,
        "min_shared_genes": min_shared_genes,
        "seed": seed,
    }
    if batch_key is None:
        parts, names, rows = [source], ["source"], [np.arange(source.n_obs)]
    else:
        if batch_key not in source.obs:
            msg = f"`source.obs[{batch_key!r}]` not found (obs columns: {list(source.obs.columns)}): pass `batch_key=`."
            raise KeyError(msg)
        batches = source.obs[batch_key]
        if batches.isna().any():
            msg = (
                f"`source.obs[{batch_key!r}]` has {int(batches.isna().sum())} missing values: every spot needs a batch."
            )
            raise ValueError(msg)
        values = list(dict.fromkeys(batches))
        rows = [np.flatnonzero((batches == b).to_numpy()) for b in values]
        parts = [source[r] for r in rows]
        names = [f"source.obs[{batch_key!r}] == {b!r}" for b in values]
    *xs, y = section_features(
        [*parts, target],
        [*names, "target"],
        use_rep=use_rep,
        layer=layer,
        n_genes=n_genes,
        n_comps=n_comps,
        n_sources=len(parts),
        min_shared_genes=min_shared_genes,
        seed=seed,
    )
    x = np.empty((source.n_obs, y.shape[1]))
    for r, xb in zip(rows, xs, strict=True):
        x[r] = xb
    logg.info(f"weighting {source.n_obs} source spots by their resemblance to {target.n_obs} target spots ({method})")
    if method == "classifier":
        w = classifier_weights(x, y, seed=seed)
    elif method == "kmm":
        w = kmm_weights(x, y, bound=max_weight, seed=seed)
    else:
        w = kliep_weights(x, y, n_centers=int(n_centers), seed=seed)
    w = normalize_weights(w, max_weight)
    ess = float(w.sum() ** 2 / (w**2).sum())

    adata = source.copy() if copy else source
    adata.obs[key_added] = w.astype(np.float32)
    adata.uns[key_added] = {"effective_sample_size": ess, "params": params}
    logg.info(f"    finished ({perf_counter() - start:.1f}s): added\n    'obs[{key_added!r}]', 'uns[{key_added!r}]'")
    return adata if copy else None


def normalize_weights(w: np.ndarray, max_weight: float) -> np.ndarray:
    """Scale to mean 1, cap at ``max_weight`` and rescale (a few rounds, so the cap holds at mean 1)."""
    w = np.clip(np.nan_to_num(np.asarray(w, dtype=np.float64), nan=0.0, posinf=0.0), 0, None)
    if w.sum() <= 0:
        return np.ones_like(w)
    for _ in range(20):
        w = w / w.mean()
        if w.max() <= max_weight * (1 + 1e-9):
            break
        w = np.minimum(w, max_weight)
    return w / w.mean()
