"""Batch integration: one expression embedding shared by several sections."""

from __future__ import annotations

from time import perf_counter

import numpy as np
import ot
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from torch import nn

from .. import _keys, _validate
from .._device import resolve_device
from .._docs import inject_docs
from .._progress import progress_bar
from ..models._adapt import grad_reverse, mmd
from ..pp._expression import fit_pca_space

METHODS = ("mmd", "dann", "ot")


@inject_docs
def integrate(
    adata: AnnData,
    /,
    *,
    batch_key: str,
    method: str = "mmd",
    label_key: str | None = None,
    layer: str | None = None,
    n_genes: int = 2000,
    n_comps: int = 50,
    n_latent: int = 30,
    hidden: int = 128,
    adapt_weight: float = 1.0,
    max_epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    key_added: str = _keys.INTEGRATE,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Embed spots of several batches (sections) in one space without the batch effect.

    Counts are log-normalised, highly variable genes chosen across batches, every gene z-scored
    within each batch and all spots embedded in one PCA. Then:

    - ``"mmd"``: an MLP encoder (with a decoder that reconstructs the PCA input, which keeps the
      biology) is trained so that each batch's embedding matches the pooled embedding of the others
      in kernel maximum mean discrepancy;
    - ``"dann"``: the same encoder is trained against a batch classifier through gradient reversal
      (domain-adversarial training);
    - ``"ot"``: no network; every batch is mapped onto the largest one by the barycentric projection
      of an exact optimal-transport plan (POT) between their PCA embeddings.

    With ``label_key``, spots that carry a label (in any batch) also train a classifier head on the
    embedding (``"mmd"`` / ``"dann"``), which keeps labelled groups apart.

    Parameters
    ----------
    {adata}
    batch_key
        Column of ``adata.obs`` with the batch (section) of each spot; at least two batches.
    method
        ``"mmd"``, ``"dann"`` or ``"ot"``.
    label_key
        Optional column of ``adata.obs`` with labels known for some spots (missing elsewhere).
    {layer}
    n_genes
        Number of highly variable genes.
    n_comps
        Number of principal components fed to the encoder.
    n_latent
        Size of the integrated embedding (``"mmd"`` / ``"dann"``; ``"ot"`` keeps ``n_comps``).
    hidden
        Width of the hidden layer of encoder and decoder.
    adapt_weight
        Weight of the MMD loss or of the reversed batch-classifier gradient.
    max_epochs
        Training epochs.
    batch_size
        Spots per training step.
    lr
        Learning rate (Adam).
    {key_added}
    {device}
    {seed}
    {progress}
    {copy}

    Returns
    -------
    ``None``, or the integrated copy if ``copy=True``. Written to ``adata``:

    - ``obsm[f"X_{{key_added}}"]``: the integrated embedding,
    - ``uns[key_added]``: ``params``, ``batches`` and, for ``"mmd"`` / ``"dann"``, the training
      ``history`` (loss per epoch).

    Examples
    --------
    >>> import anndata as ad, sptl
    >>> adata = ad.concat([sptl.datasets.her2st(s) for s in ("B1", "B2")], label="batch")
    >>> sptl.tl.integrate(adata, batch_key="batch", max_epochs=5, progress=False)
    >>> adata.obsm["X_sptl_integrated"].shape
    (565, 30)
    """
    start = perf_counter()
    # validate everything before computing or writing
    _validate.check_adata(adata, "adata")
    _validate.check_choice(method, "method", METHODS)
    if batch_key not in adata.obs:
        msg = f"`adata.obs[{batch_key!r}]` not found (obs columns: {list(adata.obs.columns)}): pass `batch_key=`."
        raise KeyError(msg)
    batch = adata.obs[batch_key]
    if batch.isna().any():
        msg = f"`adata.obs[{batch_key!r}]` is missing for {int(batch.isna().sum())} spots: give every spot a batch."
        raise ValueError(msg)
    codes, batches = pd.factorize(batch.astype(str), sort=True)
    if len(batches) < 2:
        msg = f"`adata.obs[{batch_key!r}]` holds {len(batches)} batch: integration needs at least two."
        raise ValueError(msg)
    labels = None
    if label_key is not None:
        labels = _validate.check_labels([adata], label_key, "adata")[0]
    if adapt_weight < 0:
        msg = f"`adapt_weight` must be >= 0, got {adapt_weight!r}."
        raise ValueError(msg)
    counts = _validate.get_counts(adata, layer, "adata")
    dev = resolve_device(device) if method != "ot" else None
    params = {
        "batch_key": batch_key,
        "method": method,
        "label_key": label_key,
        "layer": layer,
        "n_genes": n_genes,
        "n_comps": n_comps,
        "n_latent": n_latent,
        "hidden": hidden,
        "adapt_weight": adapt_weight,
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    logg.info(f"integrating {adata.n_obs} spots from {len(batches)} batches ({method})")

    views = [adata[codes == k] for k in range(len(batches))]
    parts = [counts[codes == k] for k in range(len(batches))]
    _, _, feats, _ = fit_pca_space(
        views, parts, genes=adata.var_names, n_sources=len(views), n_genes=n_genes, n_comps=n_comps, seed=seed
    )
    X = np.zeros((adata.n_obs, feats[0].shape[1]), dtype=np.float32)
    for k, f in enumerate(feats):
        X[codes == k] = f
    history = None
    if method == "ot":
        Z = _ot_barycentric(X, codes)
    else:
        y = None
        if labels is not None:
            y = pd.Categorical(labels).codes.astype(np.int64)  # -1 where missing
        Z, history = _train(
            X, codes, y, method=method, n_latent=n_latent, hidden=hidden, adapt_weight=adapt_weight,
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, device=dev, seed=seed, progress=progress,
        )  # fmt: skip

    # write everything at once
    out = adata.copy() if copy else adata
    out.obsm[_keys.embedding(key_added)] = Z.astype(np.float32)
    out.uns[key_added] = {"params": params, "batches": list(batches)}
    if history is not None:
        out.uns[key_added]["history"] = history
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added\n"
        f"    'obsm[{_keys.embedding(key_added)!r}]', 'uns[{key_added!r}]'"
    )
    return out if copy else None


def _ot_barycentric(X: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Map every batch onto the largest by the barycentric projection of an exact OT plan."""
    ref = int(np.bincount(codes).argmax())
    Z = X.copy()
    Xr = X[codes == ref]
    for k in np.unique(codes):
        if k == ref:
            continue
        Xk = X[codes == k]
        M = ot.dist(Xk, Xr)
        G = ot.emd(np.full(len(Xk), 1 / len(Xk)), np.full(len(Xr), 1 / len(Xr)), M / M.max(), numItermax=1_000_000)
        Z[codes == k] = (G @ Xr) / G.sum(axis=1, keepdims=True)
    return Z


class _Net(nn.Module):
    def __init__(self, n_in: int, n_latent: int, hidden: int, n_batches: int, n_classes: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_latent))
        self.decoder = nn.Sequential(nn.Linear(n_latent, hidden), nn.ReLU(), nn.Linear(hidden, n_in))
        self.batch_head = nn.Sequential(nn.Linear(n_latent, hidden), nn.ReLU(), nn.Linear(hidden, n_batches))
        self.label_head = nn.Linear(n_latent, n_classes) if n_classes > 1 else None


def _train(
    X: np.ndarray,
    codes: np.ndarray,
    y: np.ndarray | None,
    *,
    method: str,
    n_latent: int,
    hidden: int,
    adapt_weight: float,
    max_epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int,
    progress: bool,
) -> tuple[np.ndarray, list[float]]:
    """Train the encoder (reconstruction + batch alignment [+ labels]); return the embedding and the losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_batches = int(codes.max()) + 1
    n_classes = 0 if y is None else int(y.max()) + 1
    net = _Net(X.shape[1], n_latent, hidden, n_batches, n_classes).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    Xt = torch.as_tensor(X, device=device)
    bt = torch.as_tensor(codes, device=device)
    yt = None if y is None else torch.as_tensor(y, device=device)
    scale = float(X.std()) or 1.0
    history = []
    n = len(X)
    step = 0
    for epoch in progress_bar(range(max_epochs), enabled=progress, desc="integrating"):
        order = torch.as_tensor(rng.permutation(n), device=device)
        total = 0.0
        coeff = adapt_weight * (2 / (1 + np.exp(-10 * epoch / max(max_epochs, 1))) - 1)  # DANN warm-up
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            x, b = Xt[idx], bt[idx]
            z = net.encoder(x)
            loss = nn.functional.mse_loss(net.decoder(z), x) / scale**2
            if method == "mmd":
                # one batch per step against the others, in turn: every batch is pulled to the rest
                k = step % n_batches
                inside, outside = z[b == k], z[b != k]
                if len(inside) > 1 and len(outside) > 1:
                    loss = loss + adapt_weight * mmd(inside, outside, rng)
            else:
                logits = net.batch_head(grad_reverse(z, coeff))
                loss = loss + nn.functional.cross_entropy(logits, b)
            if yt is not None and net.label_head is not None:
                lab = yt[idx]
                known = lab >= 0
                if known.any():
                    loss = loss + nn.functional.cross_entropy(net.label_head(z[known]), lab[known])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        history.append(total / n)
    net.eval()
    with torch.no_grad():
        Z = torch.cat([net.encoder(Xt[i : i + 4096]) for i in range(0, n, 4096)]).cpu().numpy()
    return Z, history
