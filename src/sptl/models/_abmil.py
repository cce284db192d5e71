"""Attention-based multiple-instance learning (gated attention pooling, Ilse et al. 2018)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from torch import nn
from torch_geometric.utils import scatter, softmax

from .. import _validate
from .._device import resolve_device
from .._progress import progress_bar
from ._base import TransferModel, labels_from_proba, read_checkpoint

POOLINGS = ("attention", "mean", "max")
ATTENTION_WEIGHTS = ("softmax", "sigmoid")


@dataclass
class Bags:
    """Instances of one or several AnnData grouped into bags (what the model trains and predicts on).

    ``X`` holds the features of the instances that belong to a bag, in input order; ``bag`` the bag
    number of each of them; ``rows`` for each input AnnData, the positions of those instances in it.
    """

    X: np.ndarray
    bag: np.ndarray
    names: pd.Index
    labels: pd.Series | None
    rows: list[np.ndarray]
    offsets: list[int]

    @property
    def n_bags(self) -> int:
        """Number of bags."""
        return len(self.names)

    def sizes(self) -> np.ndarray:
        """Number of instances of every bag."""
        return np.bincount(self.bag, minlength=self.n_bags)


def collect_bags(
    data: AnnData | Sequence[AnnData],
    *,
    bag_key: str | None,
    use_rep: str,
    label_key: str | None = None,
    n_features: int | None = None,
    name: str = "adata",
) -> Bags:
    """Validate and gather the bags of ``data``.

    With ``bag_key``, ``obs[bag_key]`` names each instance's bag (missing values: the instance is in
    no bag and ignored); without it every AnnData of the list is one bag. Raises a clear error for a
    missing key, non-finite features, a feature width other than ``n_features``, a bag with one
    instance, a bag id found in two AnnData, or (with ``label_key``) a bag whose label is missing or
    varies within it.
    """
    adatas = _validate.as_adata_list(data, name)
    labels_of = _validate.names_of(adatas, name)
    if bag_key is None and len(adatas) == 1:
        msg = (
            f"`bag_key=None` makes every AnnData one bag, but `{name}` is a single AnnData: pass `bag_key=` (the"
            " `.obs` column naming each observation's bag) or a list of AnnData, one per bag."
        )
        raise ValueError(msg)
    feats, bag_ids, rows, lab_values = [], [], [], []
    for i, (ad, label) in enumerate(zip(adatas, labels_of, strict=True)):
        if use_rep not in ad.obsm:
            msg = (
                f"`{label}.obsm[{use_rep!r}]` not found (obsm keys: {list(ad.obsm)}): store the instance features"
                " there (for example `scanpy.pp.pca` or `sptl.tl.embed_histology`) or pass `use_rep=`."
            )
            raise KeyError(msg)
        X = ad.obsm[use_rep]
        X = X.to_numpy() if isinstance(X, pd.DataFrame) else np.asarray(X)
        if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
            msg = f"`{label}.obsm[{use_rep!r}]` must be a 2-d numeric array, got shape {X.shape}, dtype {X.dtype}."
            raise ValueError(msg)
        if n_features is not None and X.shape[1] != n_features:
            msg = (
                f"`{label}.obsm[{use_rep!r}]` has {X.shape[1]} features, but the model was trained on"
                f" {n_features}: compute the same features (same embedding and dimension) as for training."
            )
            raise ValueError(msg)
        if bag_key is None:
            ids = pd.Series(np.full(ad.n_obs, str(i), dtype=object), index=ad.obs_names)
        else:
            if bag_key not in ad.obs:
                msg = f"`{label}.obs[{bag_key!r}]` not found (obs columns: {list(ad.obs.columns)}): pass `bag_key=`."
                raise KeyError(msg)
            col = ad.obs[bag_key]
            ids = col.astype(object).where(col.notna(), None).map(lambda v: None if v is None else str(v))
        inside = ids.notna().to_numpy()
        bad = ~np.isfinite(X[inside].astype(np.float64)).all(axis=1)
        if bad.any():
            msg = (
                f"`{label}.obsm[{use_rep!r}]` has NaN or infinite features for {int(bad.sum())} instances in bags"
                " (missing features): compute features for every instance, or take those out of the bags"
                f" (set `obs[{bag_key!r}]` to NaN)."
            )
            raise ValueError(msg)
        feats.append(X[inside].astype(np.float32))
        bag_ids.append(ids[inside].to_numpy())
        rows.append(np.flatnonzero(inside))
        if label_key is not None:
            if label_key not in ad.obs:
                msg = (
                    f"`{label}.obs[{label_key!r}]` not found (obs columns: {list(ad.obs.columns)}): pass `label_key=`."
                )
                raise KeyError(msg)
            lab = ad.obs[label_key].iloc[rows[-1]]
            lab_values.append(lab.astype(object).where(lab.notna(), None).map(lambda v: None if v is None else str(v)))
    # bag ids: unique across the list
    seen: dict[str, int] = {}
    for i, ids in enumerate(bag_ids):
        for b in pd.unique(ids):
            if b in seen and seen[b] != i and bag_key is not None:
                msg = (
                    f"Bag {b!r} of `obs[{bag_key!r}]` appears in {labels_of[seen[b]]} and {labels_of[i]}: bag ids must"
                    " be unique across the AnnData of the list (prefix them with the slide id)."
                )
                raise ValueError(msg)
            seen[b] = i
    all_ids = np.concatenate(bag_ids)
    if len(all_ids) == 0:
        msg = f"No instance of `{name}` is in a bag: `obs[{bag_key!r}]` is missing everywhere."
        raise ValueError(msg)
    names = pd.Index(pd.unique(all_ids))
    codes = names.get_indexer(all_ids)
    sizes = np.bincount(codes, minlength=len(names))
    single = names[sizes < 2]
    if len(single):
        msg = (
            f"{len(single)} bag(s) hold a single instance (for example {single[:5].tolist()}); attention over one"
            " instance learns nothing: merge or drop them (set their `bag_key` value to NaN)."
        )
        raise ValueError(msg)
    labels = None
    if label_key is not None:
        lab = pd.concat(lab_values).to_numpy()
        frame = pd.DataFrame({"bag": all_ids, "label": lab})
        missing = frame.loc[frame["label"].isna(), "bag"].unique()
        if len(missing):
            msg = (
                f"`obs[{label_key!r}]` is missing for instances of {len(missing)} bag(s) (for example"
                f" {missing[:5].tolist()}): every instance of a bag carries the bag's label."
            )
            raise ValueError(msg)
        n_values = frame.groupby("bag", sort=False)["label"].nunique()
        varying = n_values.index[n_values > 1]
        if len(varying):
            ex = varying[0]
            msg = (
                f"`obs[{label_key!r}]` varies within {len(varying)} bag(s) of `obs[{bag_key!r}]`; for example bag"
                f" {ex!r} holds {sorted(frame.loc[frame['bag'] == ex, 'label'].unique())}. A bag has one label: put"
                " the bag-level label in every instance of the bag."
            )
            raise ValueError(msg)
        labels = frame.groupby("bag", sort=False)["label"].first().reindex(names)
        if labels.nunique() < 2:
            msg = (
                f"All {len(names)} bags have the label {labels.iloc[0]!r} in `obs[{label_key!r}]`: a classifier needs"
                " bags of at least two classes."
            )
            raise ValueError(msg)
    offsets = np.cumsum([0] + [len(r) for r in rows]).tolist()
    return Bags(
        X=np.concatenate(feats), bag=codes.astype(np.int64), names=names, labels=labels, rows=rows, offsets=offsets
    )


class _MILNet(nn.Module):
    """Instance encoder, bag pooling (gated attention, mean or max) and a linear classifier.

    Attention options: ``n_heads`` gated attention heads (their pooled embeddings concatenated),
    ``weights="sigmoid"`` (each instance's gate, normalised over its bag, instead of a softmax),
    ``residual`` (the mean of the instance embeddings added to every head's pooled embedding) and
    ``instance_head`` (a per-class instance classifier for CLAM's instance loss).
    """

    def __init__(
        self,
        n_in: int,
        hidden: int,
        attention_dim: int,
        n_classes: int,
        dropout: float,
        pooling: str,
        *,
        n_heads: int = 1,
        weights: str = "softmax",
        residual: bool = False,
        instance_head: bool = False,
    ):
        super().__init__()
        self.pooling = pooling
        attention = pooling == "attention"
        self.n_heads = n_heads if attention else 1
        self.weights = weights
        self.residual = residual and attention
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))
        if attention:
            self.attention_v = nn.Linear(hidden, attention_dim)
            self.attention_u = nn.Linear(hidden, attention_dim)
            self.attention_w = nn.Linear(attention_dim, self.n_heads)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * self.n_heads, n_classes))
        self.instance_classifier = nn.Linear(hidden, n_classes) if instance_head and attention else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Instance embeddings."""
        return self.encoder(x)

    def forward(
        self, x: torch.Tensor, index: torch.Tensor, n_bags: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bag logits, each instance's pooling weight, and each instance's own logits (a bag of one)."""
        logits, a, inst, _ = self.forward_all(self.encode(x), index, n_bags)
        return logits, a, inst

    def forward_all(
        self, h: torch.Tensor, index: torch.Tensor, n_bags: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """As :meth:`forward` from instance embeddings, plus the per-head weights (``None`` without attention)."""
        if self.pooling == "attention":
            gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
            e = self.attention_w(gate)  # (instances, heads)
            if self.weights == "sigmoid":
                g = torch.sigmoid(e)
                a = g / scatter(g, index, dim=0, dim_size=n_bags, reduce="sum")[index]
            else:
                a = softmax(e, index, num_nodes=n_bags)
            z = scatter(a.unsqueeze(-1) * h.unsqueeze(1), index, dim=0, dim_size=n_bags, reduce="sum")
            if self.residual:
                z = z + scatter(h, index, dim=0, dim_size=n_bags, reduce="mean").unsqueeze(1)
            alone = 2 * h if self.residual else h  # a bag of one: every head pools the instance itself
            inst = self.classifier(alone.repeat(1, self.n_heads))
            return self.classifier(z.flatten(1)), a.mean(dim=1), inst, a
        inst = self.classifier(h)
        if self.pooling == "mean":
            z = scatter(h, index, dim=0, dim_size=n_bags, reduce="mean")
            counts = torch.bincount(index, minlength=n_bags).clamp_min(1).to(h.dtype)
            return self.classifier(z), 1.0 / counts[index], inst, None
        logits = scatter(inst, index, dim=0, dim_size=n_bags, reduce="max")
        top = logits.argmax(dim=1)
        value = inst.gather(1, top[index].unsqueeze(1)).squeeze(1)
        best = logits.gather(1, top.unsqueeze(1)).squeeze(1)[index]
        hit = (value >= best).to(h.dtype)  # the instance(s) that give the bag its top logit
        return logits, hit / scatter(hit, index, dim=0, dim_size=n_bags, reduce="sum")[index], inst, None

    def evidence(self, h: torch.Tensor, index: torch.Tensor, n_bags: int) -> torch.Tensor:
        """Each instance's contribution to its bag's logits, times the bag size, centred over classes.

        The classifier is linear, so a bag's logits are, up to a constant, the sum over its instances of
        their pooling weight times the classifier applied to their embedding (Additive MIL, Javed et al.
        2022); times the bag size the contributions average to the bag's logits over its instances.
        """
        _, a, _, heads = self.forward_all(h, index, n_bags)
        weight = self.classifier[1].weight  # (classes, width)
        n = torch.bincount(index, minlength=n_bags).to(h.dtype)[index]
        if heads is None:
            share = (1.0 / n).unsqueeze(1) if self.pooling == "mean" else a.unsqueeze(1)
            g = (h @ weight.T).unsqueeze(1)
        else:
            share = heads + (1.0 / n).unsqueeze(1) if self.residual else heads
            g = torch.einsum("id,khd->ihk", h, weight.view(weight.shape[0], self.n_heads, -1))
        c = (share.unsqueeze(-1) * g).sum(dim=1) * n.unsqueeze(1)
        return c - c.mean(dim=1, keepdim=True)


def _rank_in_bag(score: torch.Tensor, index: torch.Tensor, n_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of every instance's ``score`` within its bag (0 = highest) and the size of its bag."""
    sizes = torch.bincount(index, minlength=n_bags)
    order = torch.argsort(index.double() * 4.0 - score.double().clamp(0, 1), stable=True)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(index)
    rank[order] = torch.arange(len(index), device=index.device) - starts[index[order]]
    return rank, sizes[index]


class ABMIL(TransferModel):
    """Attention-based multiple-instance learning: one label per bag of instances.

    A bag is a group of observations (tiles of a slide, spots of a region, cells of a sample) with one
    label for the whole bag. Each instance's features (``obsm[use_rep]``, z-scored with the training
    mean and standard deviation) go through a small encoder (linear, ReLU, dropout); gated attention
    (Ilse et al., ICML 2018) weighs the instances of a bag, the weighted mean is the bag embedding, and
    a linear layer classifies it. The attention weights say which instances drive the bag's label;
    :meth:`evidence` also says towards which class (each instance's share of the bag's logits).
    ``pooling="mean"`` and ``"max"`` give the classic baselines (mean of instance embeddings; maximum of
    instance logits).

    The defaults are set for small training sets (a few hundred bags or fewer): the bag embedding is
    the attention-weighted mean *plus* the plain mean of the instance embeddings (``residual``), so
    attention only has to learn what the mean misses, and dropout 0.5 with weight decay 0.01 keep the
    network from memorising the bags. Further options from the MIL literature are off by default: several
    attention heads, sigmoid gates instead of a softmax, CLAM's instance loss, instance dropout and early
    stopping on held-out training bags. On HER2ST bags (``benchmarks/mil.py``) none of them beat the
    defaults on both bag tasks tried.

    Bags of very different sizes are batched without padding: the instances of several bags are
    stacked and attention is normalised within each bag (segment softmax, PyG).

    Parameters
    ----------
    pooling
        ``"attention"`` (gated attention), ``"mean"`` or ``"max"``.
    hidden_dim
        Width of the instance embedding.
    attention_dim
        Width of the gated attention layer.
    dropout
        Dropout rate on the instance embedding and before the classifier.
    balance
        Weight the loss by inverse class frequency over the training bags.
    max_epochs
        Passes over the training bags.
    batch_size
        Bags per optimisation step.
    lr
        Learning rate (Adam).
    weight_decay
        Decoupled weight decay (AdamW).
    residual
        Add the mean of the instance embeddings to the attention-pooled embedding (attention then
        corrects mean pooling instead of replacing it). Attention pooling only.
    attention_weights
        ``"softmax"`` (Ilse et al.: instances compete for the weight of a bag) or ``"sigmoid"`` (each
        instance gets an independent gate in (0, 1); a bag's gates divided by their sum are the weights).
        Attention pooling only, as are ``n_heads``, ``instance_loss`` and ``top_k``.
    n_heads
        Number of gated attention heads; their pooled embeddings are concatenated and the reported
        attention is their mean.
    instance_loss
        Weight in [0, 1) of CLAM's instance loss (Lu et al., Nat. Biomed. Eng. 2021): in each training
        bag the ``top_k`` most attended instances are taken as instances of the bag's class and the
        ``top_k`` least attended as not, and a per-class instance classifier learns them; the bag loss
        gets weight ``1 - instance_loss``. 0 turns it off.
    top_k
        Instances per bag taken from each end for ``instance_loss`` (at most half of a bag).
    instance_dropout
        Chance in [0, 1) that a training instance is left out of its bag in an optimisation step (each
        bag keeps at least one).
    validation_fraction
        Fraction in [0, 0.5) of the training bags (per class) held out to pick the epoch with the lowest
        validation loss (early stopping); 0 trains for ``max_epochs`` on all bags.
    device
        Torch device; ``None`` picks CUDA when available.
    seed
        Random seed (initialisation, dropout, bag order, validation split).

    Examples
    --------
    >>> import numpy as np, anndata as ad, sptl
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(np.zeros((400, 1)), obsm={"X_feat": rng.normal(size=(400, 8))})
    >>> adata.obs["bag"] = np.repeat(np.arange(40), 10).astype(str)
    >>> positive = np.repeat(np.arange(40) % 2 == 1, 10)
    >>> adata.obsm["X_feat"][positive & (np.arange(400) % 10 < 3), 0] += 3  # 3 key instances per positive bag
    >>> adata.obs["label"] = np.where(positive, "pos", "neg")
    >>> model = sptl.models.ABMIL(max_epochs=30, seed=0)
    >>> model = model.fit(adata, bag_key="bag", label_key="label", use_rep="X_feat", progress=False)
    >>> truth = adata.obs.groupby("bag", sort=False)["label"].first()
    >>> bool((model.predict(adata, bag_key="bag") == truth).mean() > 0.9)
    True
    """

    #: Values of the options added after the first checkpoints were written: what those checkpoints used.
    _LEGACY = {
        "residual": False,
        "attention_weights": "softmax",
        "n_heads": 1,
        "instance_loss": 0.0,
        "top_k": 1,
        "instance_dropout": 0.0,
        "validation_fraction": 0.0,
    }

    def __init__(
        self,
        *,
        pooling: str = "attention",
        hidden_dim: int = 64,
        attention_dim: int = 32,
        dropout: float = 0.5,
        balance: bool = True,
        max_epochs: int = 50,
        batch_size: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        residual: bool = True,
        attention_weights: str = "softmax",
        n_heads: int = 1,
        instance_loss: float = 0.0,
        top_k: int = 1,
        instance_dropout: float = 0.0,
        validation_fraction: float = 0.0,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        _validate.check_choice(pooling, "pooling", POOLINGS)
        _validate.check_choice(attention_weights, "attention_weights", ATTENTION_WEIGHTS)
        for name, value in (
            ("hidden_dim", hidden_dim),
            ("attention_dim", attention_dim),
            ("max_epochs", max_epochs),
            ("batch_size", batch_size),
            ("n_heads", n_heads),
            ("top_k", top_k),
        ):
            if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
                msg = f"`{name}` must be a positive integer, got {value!r}."
                raise ValueError(msg)
        for name, value, high in (
            ("dropout", dropout, 1.0),
            ("instance_loss", instance_loss, 1.0),
            ("instance_dropout", instance_dropout, 1.0),
            ("validation_fraction", validation_fraction, 0.5),
        ):
            if not 0 <= value < high:
                msg = f"`{name}` must lie in [0, {high:g}), got {value!r}."
                raise ValueError(msg)
        if weight_decay < 0 or lr <= 0:
            msg = (
                f"`lr` must be positive and `weight_decay` non-negative, got lr={lr!r}, weight_decay={weight_decay!r}."
            )
            raise ValueError(msg)
        super().__init__(
            pooling=pooling,
            hidden_dim=int(hidden_dim),
            attention_dim=int(attention_dim),
            dropout=float(dropout),
            balance=bool(balance),
            max_epochs=int(max_epochs),
            batch_size=int(batch_size),
            lr=float(lr),
            weight_decay=float(weight_decay),
            residual=bool(residual),
            attention_weights=attention_weights,
            n_heads=int(n_heads),
            instance_loss=float(instance_loss),
            top_k=int(top_k),
            instance_dropout=float(instance_dropout),
            validation_fraction=float(validation_fraction),
            device=device,
            seed=int(seed),
        )
        self.use_rep_: str | None = None
        self.net_: _MILNet | None = None

    # -- training -----------------------------------------------------------------------------------
    def fit(
        self,
        data: AnnData | Sequence[AnnData],
        /,
        *,
        bag_key: str | None,
        label_key: str,
        use_rep: str,
        progress: bool = True,
    ) -> ABMIL:
        """Train on labelled bags.

        Parameters
        ----------
        data
            One AnnData, or a list of them (for example one per slide).
        bag_key
            Column of ``.obs`` naming each instance's bag; instances where it is missing are in no bag
            and ignored. ``None`` with a list: every AnnData is one bag.
        label_key
            Column of ``.obs`` with the bag label, the same for every instance of a bag.
        use_rep
            Key of ``.obsm`` with the instance features (for example ``"X_pca"`` or a histology embedding).
        progress
            Show a progress bar over epochs.

        Returns
        -------
        The fitted model.
        """
        bags = collect_bags(data, bag_key=bag_key, use_rep=use_rep, label_key=label_key)
        return self._fit_bags(bags, use_rep=use_rep, progress=progress)

    def _net(self, n_in: int, n_classes: int) -> _MILNet:
        p = self.params
        return _MILNet(
            n_in,
            p["hidden_dim"],
            p["attention_dim"],
            n_classes,
            p["dropout"],
            p["pooling"],
            n_heads=p["n_heads"],
            weights=p["attention_weights"],
            residual=p["residual"],
            instance_head=p["instance_loss"] > 0,
        )

    def _fit_bags(self, bags: Bags, *, use_rep: str, progress: bool) -> ABMIL:
        p = self.params
        classes = sorted(bags.labels.unique())
        y = pd.Categorical(bags.labels, categories=classes).codes.astype(np.int64)
        if len(classes) < 2:
            msg = f"The training bags hold one class {classes}: a classifier needs at least two."
            raise ValueError(msg)
        mean = bags.X.mean(axis=0)
        std = np.maximum(bags.X.std(axis=0), 1e-6)
        device = resolve_device(p["device"])
        torch.manual_seed(p["seed"])
        rng = np.random.default_rng(p["seed"])
        net = self._net(bags.X.shape[1], len(classes))
        net.to(device)
        train_bags, val_bags = _validation_split(y, p["validation_fraction"], rng)
        freq = np.bincount(y[train_bags], minlength=len(classes)).astype(np.float32)
        weight = freq.sum() / (len(classes) * np.maximum(freq, 1)) if p["balance"] else np.ones_like(freq)
        weight_t = torch.as_tensor(weight, device=device)
        loss_fn = nn.CrossEntropyLoss(weight=weight_t)
        opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        X = torch.as_tensor((bags.X - mean) / std, device=device)
        members = _members(bags)
        y_t = torch.as_tensor(y, device=device)
        losses, val_losses = [], []
        best, best_state = np.inf, None
        for _ in progress_bar(range(p["max_epochs"]), enabled=progress, desc="ABMIL: epochs"):
            net.train()
            order = rng.permutation(train_bags)
            total = 0.0
            for s in range(0, len(order), p["batch_size"]):
                chosen = order[s : s + p["batch_size"]]
                idx = np.concatenate([members[b] for b in chosen])
                local = torch.as_tensor(
                    np.repeat(np.arange(len(chosen)), [len(members[b]) for b in chosen]), device=device
                )
                if p["instance_dropout"] > 0:
                    keep = _instance_keep(local, len(chosen), p["instance_dropout"], device)
                    idx, local = idx[keep.cpu().numpy()], local[keep]
                loss = self._loss(net, X[idx], local, y_t[chosen], loss_fn, weight_t)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(chosen)
            losses.append(total / len(train_bags))
            if len(val_bags):
                net.eval()
                with torch.no_grad():
                    idx = np.concatenate([members[b] for b in val_bags])
                    local = np.repeat(np.arange(len(val_bags)), [len(members[b]) for b in val_bags])
                    logits, _, _ = net(X[idx], torch.as_tensor(local, device=device), len(val_bags))
                    val = float(loss_fn(logits, y_t[val_bags]))
                val_losses.append(val)
                if val < best:
                    best = val
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.use_rep_ = use_rep
        self.classes_ = [str(c) for c in classes]
        self.var_names_ = pd.Index([f"{use_rep}[{i}]" for i in range(bags.X.shape[1])])
        self.feature_mean_ = mean.astype(np.float32)
        self.feature_std_ = std.astype(np.float32)
        self.history_ = {"loss": losses, "n_bags": int(bags.n_bags), "n_instances": len(bags.bag)}
        if len(val_bags):
            self.history_ |= {"validation_loss": val_losses, "best_epoch": int(np.argmin(val_losses))}
        return self

    def _loss(
        self,
        net: _MILNet,
        x: torch.Tensor,
        index: torch.Tensor,
        y: torch.Tensor,
        loss_fn: nn.Module,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        """Bag loss plus, with ``instance_loss``, CLAM's instance loss on attention pseudo-labels."""
        p = self.params
        n_bags = len(y)
        h = net.encode(x)
        logits, a, _, heads = net.forward_all(h, index, n_bags)
        loss = loss_fn(logits, y)
        if heads is None:
            return loss
        if p["instance_loss"] > 0:
            # CLAM: in each bag, the top-k attended instances are instances of the bag's class, the bottom-k not
            rank, size = _rank_in_bag(a.detach(), index, n_bags)
            k = torch.clamp(size // 2, max=p["top_k"])
            top, bottom = rank < k, rank >= size - k
            chosen = top | bottom
            logit = net.instance_classifier(h[chosen]).gather(1, y[index[chosen]].unsqueeze(1)).squeeze(1)
            w = weight[y[index[chosen]]]
            inst = nn.functional.binary_cross_entropy_with_logits(logit, top[chosen].to(logit.dtype), weight=w)
            loss = (1 - p["instance_loss"]) * loss + p["instance_loss"] * inst
        return loss

    # -- prediction ---------------------------------------------------------------------------------
    def _forward_bags(self, bags: Bags, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Bag probabilities, instance attention, instance probabilities and instance evidence.

        Instances in ``bags`` order; evidence is :meth:`_MILNet.evidence` (classes in columns).
        """
        self._check_fitted()
        device = resolve_device(self.params["device"])
        self.net_.to(device)
        X = torch.as_tensor((bags.X - self.feature_mean_) / self.feature_std_, device=device)
        members = _members(bags)
        proba = np.empty((bags.n_bags, len(self.classes_)), dtype=np.float32)
        attn = np.empty(len(bags.bag), dtype=np.float32)
        inst = np.empty((len(bags.bag), len(self.classes_)), dtype=np.float32)
        evid = np.empty((len(bags.bag), len(self.classes_)), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, bags.n_bags, chunk):
                chosen = np.arange(s, min(s + chunk, bags.n_bags))
                idx = np.concatenate([members[b] for b in chosen])
                local = torch.as_tensor(
                    np.repeat(np.arange(len(chosen)), [len(members[b]) for b in chosen]), device=device
                )
                h = self.net_.encode(X[idx])
                logits, a, il, _ = self.net_.forward_all(h, local, len(chosen))
                proba[chosen] = torch.softmax(logits, dim=1).cpu().numpy()
                attn[idx] = a.cpu().numpy()
                inst[idx] = torch.softmax(il, dim=1).cpu().numpy()
                evid[idx] = self.net_.evidence(h, local, len(chosen)).cpu().numpy()
        return proba, attn, inst, evid

    def _bags_for_prediction(self, data: AnnData | Sequence[AnnData], bag_key: str | None, use_rep: str | None) -> Bags:
        self._check_fitted()
        return collect_bags(
            data, bag_key=bag_key, use_rep=use_rep or self.use_rep_, n_features=len(self.var_names_), name="adata"
        )

    def predict_proba(
        self, data: AnnData | Sequence[AnnData], /, *, bag_key: str | None, use_rep: str | None = None
    ) -> pd.DataFrame:
        """Class probabilities of every bag (rows: bag ids, columns: classes).

        ``use_rep`` defaults to the key the model was trained on; its width must match.
        """
        bags = self._bags_for_prediction(data, bag_key, use_rep)
        proba, _, _, _ = self._forward_bags(bags)
        return pd.DataFrame(proba, index=bags.names.copy(), columns=pd.Index(self.classes_))

    def predict(
        self, data: AnnData | Sequence[AnnData], /, *, bag_key: str | None, use_rep: str | None = None
    ) -> pd.Series:
        """Most probable class of every bag (categorical Series indexed by bag id)."""
        return labels_from_proba(self.predict_proba(data, bag_key=bag_key, use_rep=use_rep), None)

    def attention(
        self, data: AnnData | Sequence[AnnData], /, *, bag_key: str | None, use_rep: str | None = None
    ) -> pd.Series | list[pd.Series]:
        """Each instance's weight in its bag's pooling (sums to 1 within a bag; NaN outside bags).

        Returns one Series indexed like ``obs_names`` per AnnData (a list when ``data`` is a list).
        """
        bags = self._bags_for_prediction(data, bag_key, use_rep)
        _, attn, _, _ = self._forward_bags(bags)
        adatas = [data] if isinstance(data, AnnData) else list(data)
        out = []
        for i, ad in enumerate(adatas):
            values = np.full(ad.n_obs, np.nan, dtype=np.float32)
            values[bags.rows[i]] = attn[bags.offsets[i] : bags.offsets[i + 1]]
            out.append(pd.Series(values, index=ad.obs_names.copy(), name="attention"))
        return out[0] if isinstance(data, AnnData) else out

    def evidence(
        self, data: AnnData | Sequence[AnnData], /, *, bag_key: str | None, use_rep: str | None = None
    ) -> pd.DataFrame | list[pd.DataFrame]:
        """Each instance's contribution to its bag's class logits, times the bag size (NaN outside bags).

        The classifier is linear, so a bag's logits are (up to the bias) the sum over its instances of
        the pooling weight times the classifier applied to the instance embedding, as in Additive MIL
        (Javed et al., NeurIPS 2022). Multiplied by the bag size and centred over the classes, these
        contributions average to the bag's centred logits over its instances: an instance with high
        attention and high evidence for a class pushes the bag towards it, one with high attention but
        evidence against the class pushes it away. Unlike attention (one weight per instance, the same
        for every class) the evidence is class-aware. Exact for attention and mean pooling; for max
        pooling only the instance that gives the bag its top logit gets a non-zero value.

        Returns one DataFrame (rows like ``obs_names``, one column per class) per AnnData (a list when
        ``data`` is a list).
        """
        bags = self._bags_for_prediction(data, bag_key, use_rep)
        _, _, _, evid = self._forward_bags(bags)
        adatas = [data] if isinstance(data, AnnData) else list(data)
        out = []
        for i, ad in enumerate(adatas):
            values = np.full((ad.n_obs, len(self.classes_)), np.nan, dtype=np.float32)
            values[bags.rows[i]] = evid[bags.offsets[i] : bags.offsets[i + 1]]
            out.append(pd.DataFrame(values, index=ad.obs_names.copy(), columns=pd.Index(self.classes_)))
        return out[0] if isinstance(data, AnnData) else out

    # -- persistence --------------------------------------------------------------------------------
    _state_arrays = ("feature_mean_", "feature_std_", "use_rep_")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ABMIL:
        """Load a model saved with :meth:`save`; refuses files of another model class or format.

        A checkpoint written before an option existed gets the value it was trained with, not today's
        default; options this version does not know are refused.
        """
        header, arrays = read_checkpoint(path, cls.__name__)
        params = dict(header["params"])
        unknown = sorted(set(params) - set(inspect.signature(cls).parameters))
        if unknown:
            msg = (
                f"{path} holds ABMIL options this sptl does not know ({unknown}): load it with the sptl that wrote it."
            )
            raise ValueError(msg)
        missing = [k for k in cls._state_arrays if k not in arrays]
        if missing:
            msg = f"{path} is incomplete: arrays {missing} are missing."
            raise ValueError(msg)
        model = cls(**(cls._LEGACY | params))
        model.var_names_ = pd.Index(header["var_names"])
        model.classes_ = header["classes"]
        model.history_ = header.get("history", {})
        model._restore(arrays)
        return model

    _WEIGHT = "weight:"

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "feature_mean_": self.feature_mean_,
            "feature_std_": self.feature_std_,
            "use_rep_": np.asarray(self.use_rep_),
        }
        arrays.update({self._WEIGHT + k: v.detach().cpu().numpy() for k, v in self.net_.state_dict().items()})
        return arrays

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.feature_mean_ = arrays["feature_mean_"].astype(np.float32)
        self.feature_std_ = arrays["feature_std_"].astype(np.float32)
        self.use_rep_ = str(arrays["use_rep_"])
        if len(self.var_names_) != len(self.feature_mean_):
            msg = "Checkpoint is inconsistent: the feature names and the feature means differ in length."
            raise ValueError(msg)
        p = self.params
        net = self._net(len(self.feature_mean_), len(self.classes_))
        state = {k[len(self._WEIGHT) :]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(self._WEIGHT)}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            msg = f"Checkpoint weights do not fit an ABMIL with {p}: {e}"
            raise ValueError(msg) from e
        net.eval()
        self.net_ = net

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        state = (
            f"fitted on {len(self.var_names_)} features of obsm[{self.use_rep_!r}], {len(self.classes_)} classes"
            if self.is_fitted
            else "not fitted"
        )
        return f"ABMIL({args}) [{state}]"


def _validation_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation bag indices, stratified by class (every class keeps a training bag)."""
    if fraction <= 0:
        return np.arange(len(y)), np.arange(0)
    val = []
    for c in np.unique(y):
        where = rng.permutation(np.flatnonzero(y == c))
        val.extend(where[: min(round(fraction * len(where)), len(where) - 1)])
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), val), val


def _instance_keep(index: torch.Tensor, n_bags: int, rate: float, device: torch.device) -> torch.Tensor:
    """Random instance mask for instance dropout; every bag keeps at least one instance."""
    r = torch.rand(len(index), device=device)
    top = scatter(r, index, dim=0, dim_size=n_bags, reduce="max")
    return (r >= rate) | (r == top[index])


def _members(bags: Bags) -> list[np.ndarray]:
    """Positions (into ``bags.X``) of each bag's instances."""
    order = np.argsort(bags.bag, kind="stable")
    return np.split(order, np.cumsum(bags.sizes())[:-1])
