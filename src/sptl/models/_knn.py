"""k-nearest-neighbour label transfer in a joint, per-section standardised PCA space."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .. import _validate
from .._device import resolve_device
from .._progress import progress_bar
from ..pp._expression import fit_pca_space, standardized
from ._base import TransferModel, class_sizes, labels_from_proba, source_weights


class KNNTransfer(TransferModel):
    """Label transfer by a similarity-weighted vote of the nearest annotated source spots.

    Each section is library-size normalised and log-transformed on the shared genes, highly variable
    genes are chosen across sections, every gene is z-scored within its own section (which removes
    section- and patient-level shifts), and a PCA fitted jointly on source and (when given) target
    spots embeds all of them. Each target spot takes the cosine-similarity-weighted vote of its
    ``n_neighbors`` nearest source spots; with ``balance=True`` votes are divided by the class size in
    the source, so abundant classes do not drown rare ones.

    Parameters
    ----------
    n_genes
        Number of highly variable genes to use.
    n_comps
        Number of principal components of the joint embedding.
    n_neighbors
        Number of source neighbours that vote.
    balance
        Weight votes by the inverse class frequency in the source.
    device
        Torch device for the neighbour search; ``None`` picks CUDA when available.
    seed
        Random seed of the PCA.

    Examples
    --------
    >>> import sptl
    >>> src, tgt = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> model = sptl.models.KNNTransfer().fit(src, label_key="label", target=tgt, exclude=["undetermined"])
    >>> labels = model.predict(tgt)
    """

    _state_arrays = (
        "components_",
        "target_sum_",
        "source_embedding_",
        "source_codes_",
        "class_weights_",
        "source_weights_",
    )

    def __init__(
        self,
        *,
        n_genes: int = 3000,
        n_comps: int = 30,
        n_neighbors: int = 15,
        balance: bool = True,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("n_genes", n_genes), ("n_comps", n_comps), ("n_neighbors", n_neighbors)):
            if int(value) < 1:
                msg = f"`{name}` must be a positive integer, got {value!r}."
                raise ValueError(msg)
        super().__init__(
            n_genes=int(n_genes),
            n_comps=int(n_comps),
            n_neighbors=int(n_neighbors),
            balance=bool(balance),
            device=device,
            seed=int(seed),
        )

    def fit(
        self,
        source: AnnData | Sequence[AnnData],
        /,
        *,
        label_key: str,
        target: AnnData | Sequence[AnnData] | None = None,
        layer: str | None = None,
        exclude: Sequence[str] = (),
        min_shared_genes: int = _validate.MIN_SHARED_GENES,
        weights_key: str | None = None,
        progress: bool = True,
    ) -> KNNTransfer:
        """Fit on labelled source sections (optionally embedding target sections jointly).

        Parameters
        ----------
        source
            One labelled AnnData or a list of them (each one a section/batch), raw counts.
        label_key
            Column of ``source.obs`` with the labels; missing values are ignored.
        target
            Unlabelled section(s) to include in gene selection and in the PCA fit.
        layer
            Layer with raw counts; ``None`` uses ``.X``.
        exclude
            Labels not to transfer (for example ``["undetermined"]``); those spots are ignored.
        min_shared_genes
            Fewest genes all sections must share.
        weights_key
            Column of every source's ``.obs`` with instance weights (for example from
            :func:`sptl.tl.instance_weights`): each source spot's vote is multiplied by its weight, and
            class sizes for ``balance`` are weighted sums. ``None`` weighs all spots equally.
        progress
            Accepted for the same call as the other models; fitting here has no long loop to show.

        Returns
        -------
        The fitted model.
        """
        sources, targets, labels, names, counts = self._sections(
            source, target, label_key=label_key, layer=layer, exclude=exclude
        )
        everything = sources + targets
        lab = pd.concat(labels)
        labelled = lab.notna().to_numpy()
        sw = source_weights(sources, weights_key, labelled)[labelled]
        genes = _validate.shared_genes(everything, names, min_shared_genes)
        p = self.params

        hvg, components, pcs, target_sum = fit_pca_space(
            everything,
            counts,
            genes=genes,
            n_sources=len(sources),
            n_genes=p["n_genes"],
            n_comps=p["n_comps"],
            seed=p["seed"],
        )
        src_emb = _l2(np.vstack(pcs[: len(sources)]))[labelled]
        classes = sorted(lab.dropna().unique())
        codes = pd.Categorical(lab[labelled], categories=classes).codes.astype(np.int64)
        freq = class_sizes(codes, sw, len(classes))
        weights = 1.0 / freq if p["balance"] else np.ones_like(freq)

        self.var_names_ = pd.Index(hvg)
        self.classes_ = classes
        self.components_ = components
        self.target_sum_ = np.float32(target_sum)
        self.source_embedding_ = src_emb.astype(np.float32)
        self.source_codes_ = codes
        self.class_weights_ = (weights / weights.sum()).astype(np.float32)
        self.source_weights_ = sw
        self.history_ = {"n_source_spots": int(labelled.sum()), "n_shared_genes": len(genes)}
        return self

    def transform(self, adata: AnnData, /, *, layer: str | None = None, max_missing_genes: float = 0.1) -> np.ndarray:
        """Embed ``adata`` (one section, raw counts) into the model's space (L2-normalised rows).

        Model genes missing from ``adata`` count as zero when they are at most ``max_missing_genes``
        (a fraction) of the model's genes; otherwise a ValueError is raised.
        """
        _validate.check_adata(adata, "adata")
        X = self._model_counts(adata, layer, max_missing_genes)
        return _l2(standardized(X, float(self.target_sum_)) @ self.components_.T)

    def predict_proba(
        self,
        adata: AnnData,
        /,
        *,
        layer: str | None = None,
        max_missing_genes: float = 0.1,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Class probabilities for every observation of ``adata`` (rows: ``obs_names``, columns: classes)."""
        emb = self.transform(adata, layer=layer, max_missing_genes=max_missing_genes)
        return self.proba_from_embedding(emb, adata.obs_names, progress=progress)

    def proba_from_embedding(self, emb: np.ndarray, index: pd.Index, *, progress: bool = True) -> pd.DataFrame:
        """Class probabilities from an embedding :meth:`transform` already computed (rows ``index``)."""
        probs, _ = self._vote(emb, progress=progress)
        return pd.DataFrame(probs, index=index.copy(), columns=pd.Index(self.classes_))

    def predict(
        self,
        adata: AnnData,
        /,
        *,
        layer: str | None = None,
        max_missing_genes: float = 0.1,
        progress: bool = True,
    ) -> pd.Series:
        """Most probable class of every observation of ``adata`` (categorical Series)."""
        proba = self.predict_proba(adata, layer=layer, max_missing_genes=max_missing_genes, progress=progress)
        return labels_from_proba(proba, None)

    def _vote(
        self, emb: np.ndarray, *, progress: bool, chunk: int = 4096, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities of the vote and each query's mean similarity to its ``k`` neighbours."""
        return knn_vote(
            emb,
            self.source_embedding_,
            self.source_codes_,
            class_weights=self.class_weights_,
            spot_weights=self.source_weights_,
            k=self.params["n_neighbors"],
            device=resolve_device(self.params["device"]),
            progress=progress,
            chunk=chunk,
            exclude_self=exclude_self,
        )


def knn_vote(
    query: np.ndarray,
    source: np.ndarray,
    codes: np.ndarray,
    *,
    class_weights: np.ndarray,
    spot_weights: np.ndarray,
    k: int,
    device: torch.device,
    progress: bool = False,
    chunk: int = 4096,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-similarity-weighted vote of each query's ``k`` nearest source spots (rows L2-normalised).

    Each neighbour votes for its class (``codes``) with its similarity (clipped at 0) times its
    class's weight times its own weight. Returns the class probabilities and each query's mean
    similarity to its neighbours. With ``exclude_self`` the queries are the source spots themselves
    (row i of ``query`` is source spot i) and each spot's own vote is left out (a leave-one-out vote).
    """
    src = torch.as_tensor(source, device=device)
    n_classes = len(class_weights)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(codes, device=device), num_classes=n_classes).float()
    onehot = onehot * torch.as_tensor(class_weights, device=device)
    spot_w = torch.as_tensor(spot_weights, device=device)
    k = min(k, src.shape[0] - int(exclude_self))
    out = np.empty((query.shape[0], n_classes), dtype=np.float32)
    mean_sim = np.empty(query.shape[0], dtype=np.float32)
    starts = range(0, query.shape[0], chunk)
    for s in progress_bar(starts, enabled=progress, desc="knn transfer: vote", total=len(starts)):
        q = torch.as_tensor(query[s : s + chunk], device=device)
        S = q @ src.T
        if exclude_self:
            rows = torch.arange(len(q), device=device)
            S[rows, rows + s] = -torch.inf
        sim, idx = S.topk(k, dim=1)
        w = (sim.clamp_min(0) * spot_w[idx]).unsqueeze(-1)
        votes = (w * onehot[idx]).sum(1)
        total = votes.sum(1, keepdim=True)
        # a spot with no positively similar neighbour gets a uniform vote
        votes = torch.where(total > 0, votes / total.clamp_min(1e-12), torch.full_like(votes, 1 / n_classes))
        out[s : s + chunk] = votes.cpu().numpy()
        mean_sim[s : s + chunk] = sim.mean(1).cpu().numpy()
    return out, mean_sim


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
