"""Scores of a batch integration: batch mixing (iLISI) and label conservation (ARI, silhouette)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.neighbors import NearestNeighbors


def batch_mixing(embedding: np.ndarray, batch: Sequence | pd.Series, *, n_neighbors: int = 30) -> float:
    """Normalised iLISI: how evenly batches mix among each spot's nearest neighbours.

    For every spot, the inverse Simpson index of the batch proportions among its ``n_neighbors``
    nearest neighbours in ``embedding`` (itself included), rescaled from ``[1, n_batches]`` to
    ``[0, 1]`` and averaged: 0 when neighbourhoods hold one batch, 1 when they hold every batch
    equally (the scib convention).

    Parameters
    ----------
    embedding
        One row per spot.
    batch
        Batch of each spot.
    n_neighbors
        Neighbourhood size.

    Returns
    -------
    The mean normalised iLISI, in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> from sptl.metrics import batch_mixing
    >>> rng = np.random.default_rng(0)
    >>> mixed = batch_mixing(rng.normal(size=(200, 5)), np.repeat(["a", "b"], 100))
    >>> apart = np.r_[rng.normal(size=(100, 5)), rng.normal(size=(100, 5)) + 10]
    >>> split = batch_mixing(apart, np.repeat(["a", "b"], 100))
    >>> mixed > 0.8 and split < 0.05
    True
    """
    Z = np.asarray(embedding, dtype=float)
    codes, uniques = pd.factorize(pd.Series(np.asarray(batch, dtype=object)).astype(str))
    if len(codes) != len(Z):
        msg = f"`embedding` has {len(Z)} rows but `batch` has {len(codes)} entries."
        raise ValueError(msg)
    n_batches = len(uniques)
    if n_batches < 2:
        msg = f"`batch` holds {n_batches} batch: mixing needs at least two."
        raise ValueError(msg)
    k = min(n_neighbors, len(Z))
    idx = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z, return_distance=False)
    counts = np.zeros((len(Z), n_batches))
    np.add.at(counts, (np.repeat(np.arange(len(Z)), k), codes[idx].ravel()), 1.0)
    p = counts / k
    lisi = 1.0 / (p**2).sum(axis=1)
    return float(((lisi - 1) / (n_batches - 1)).mean())


def label_conservation(embedding: np.ndarray, labels: Sequence | pd.Series, *, seed: int = 0) -> dict[str, float]:
    """How well an embedding keeps known labels apart: ARI of a clustering and silhouette.

    Spots with a missing label are left out. The embedding is clustered with k-means into as many
    clusters as there are labels; ``ari`` compares those clusters with the labels. ``silhouette`` is
    the silhouette of the labels rescaled to ``[0, 1]`` (the scib convention).

    Parameters
    ----------
    embedding
        One row per spot.
    labels
        Known label of each spot.
    seed
        Random seed of the k-means clustering.

    Returns
    -------
    ``{"ari": ..., "silhouette": ...}``.

    Examples
    --------
    >>> import numpy as np
    >>> from sptl.metrics import label_conservation
    >>> rng = np.random.default_rng(0)
    >>> Z = np.r_[rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 8]
    >>> label_conservation(Z, np.repeat(["x", "y"], 50))["ari"]
    1.0
    """
    Z = np.asarray(embedding, dtype=float)
    lab = pd.Series(np.asarray(labels, dtype=object))
    if len(lab) != len(Z):
        msg = f"`embedding` has {len(Z)} rows but `labels` has {len(lab)} entries."
        raise ValueError(msg)
    keep = lab.notna().to_numpy()
    Z, lab = Z[keep], lab[keep].astype(str).to_numpy()
    n_labels = len(np.unique(lab))
    if n_labels < 2:
        msg = f"`labels` holds {n_labels} known label(s): conservation needs at least two."
        raise ValueError(msg)
    clusters = KMeans(n_clusters=n_labels, random_state=seed, n_init=10).fit_predict(Z)
    sil = silhouette_score(Z, lab)
    return {"ari": float(adjusted_rand_score(lab, clusters)), "silhouette": float((sil + 1) / 2)}
