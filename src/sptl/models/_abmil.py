"""Attention-based multiple-instance learning (gated attention pooling, Ilse et al. 2018)."""

from __future__ import annotations

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
from ._base import TransferModel, labels_from_proba

POOLINGS = ("attention", "mean", "max")


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
    """Instance encoder, bag pooling (gated attention, mean or max) and a linear classifier."""

    def __init__(self, n_in: int, hidden: int, attention_dim: int, n_classes: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout))
        if pooling == "attention":
            self.attention_v = nn.Linear(hidden, attention_dim)
            self.attention_u = nn.Linear(hidden, attention_dim)
            self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(
        self, x: torch.Tensor, index: torch.Tensor, n_bags: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bag logits, each instance's pooling weight, and each instance's own logits (a bag of one)."""
        h = self.encoder(x)
        inst = self.classifier(h)
        if self.pooling == "attention":
            gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
            a = softmax(self.attention_w(gate).squeeze(-1), index, num_nodes=n_bags)
            z = scatter(a.unsqueeze(-1) * h, index, dim=0, dim_size=n_bags, reduce="sum")
            return self.classifier(z), a, inst
        if self.pooling == "mean":
            z = scatter(h, index, dim=0, dim_size=n_bags, reduce="mean")
            counts = torch.bincount(index, minlength=n_bags).clamp_min(1).to(h.dtype)
            return self.classifier(z), 1.0 / counts[index], inst
        logits = scatter(inst, index, dim=0, dim_size=n_bags, reduce="max")
        top = logits.argmax(dim=1)
        value = inst.gather(1, top[index].unsqueeze(1)).squeeze(1)
        best = logits.gather(1, top.unsqueeze(1)).squeeze(1)[index]
        hit = (value >= best).to(h.dtype)  # the instance(s) that give the bag its top logit
        return logits, hit / scatter(hit, index, dim=0, dim_size=n_bags, reduce="sum")[index], inst


class ABMIL(TransferModel):
    """Attention-based multiple-instance learning: one label per bag of instances.

    A bag is a group of observations (tiles of a slide, spots of a region, cells of a sample) with one
    label for the whole bag. Each instance's features (``obsm[use_rep]``, z-scored with the training
    mean and standard deviation) go through a small encoder (linear, ReLU, dropout); gated attention
    (Ilse et al., ICML 2018) weighs the instances of a bag, the weighted mean is the bag embedding, and
    a linear layer classifies it. The attention weights say which instances drive the bag's label.
    ``pooling="mean"`` and ``"max"`` give the classic baselines (mean of instance embeddings; maximum of
    instance logits).

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
        L2 penalty (AdamW).
    device
        Torch device; ``None`` picks CUDA when available.
    seed
        Random seed (initialisation, dropout, bag order).

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

    def __init__(
        self,
        *,
        pooling: str = "attention",
        hidden_dim: int = 64,
        attention_dim: int = 32,
        dropout: float = 0.25,
        balance: bool = True,
        max_epochs: int = 50,
        batch_size: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        _validate.check_choice(pooling, "pooling", POOLINGS)
        for name, value in (
            ("hidden_dim", hidden_dim),
            ("attention_dim", attention_dim),
            ("max_epochs", max_epochs),
            ("batch_size", batch_size),
        ):
            if int(value) < 1:
                msg = f"`{name}` must be a positive integer, got {value!r}."
                raise ValueError(msg)
        if not 0 <= dropout < 1:
            msg = f"`dropout` must lie in [0, 1), got {dropout!r}."
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
        net = _MILNet(bags.X.shape[1], p["hidden_dim"], p["attention_dim"], len(classes), p["dropout"], p["pooling"])
        net.to(device)
        freq = np.bincount(y, minlength=len(classes)).astype(np.float32)
        weight = freq.sum() / (len(classes) * freq) if p["balance"] else np.ones_like(freq)
        loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weight, device=device))
        opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        X = torch.as_tensor((bags.X - mean) / std, device=device)
        members = _members(bags)
        y_t = torch.as_tensor(y, device=device)
        losses = []
        net.train()
        for _ in progress_bar(range(p["max_epochs"]), enabled=progress, desc="ABMIL: epochs"):
            order = rng.permutation(bags.n_bags)
            total = 0.0
            for s in range(0, len(order), p["batch_size"]):
                chosen = order[s : s + p["batch_size"]]
                idx = np.concatenate([members[b] for b in chosen])
                local = np.repeat(np.arange(len(chosen)), [len(members[b]) for b in chosen])
                logits, _, _ = net(X[idx], torch.as_tensor(local, device=device), len(chosen))
                loss = loss_fn(logits, y_t[chosen])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(chosen)
            losses.append(total / bags.n_bags)
        net.eval()
        self.net_ = net
        self.use_rep_ = use_rep
        self.classes_ = [str(c) for c in classes]
        self.var_names_ = pd.Index([f"{use_rep}[{i}]" for i in range(bags.X.shape[1])])
        self.feature_mean_ = mean.astype(np.float32)
        self.feature_std_ = std.astype(np.float32)
        self.history_ = {"loss": losses, "n_bags": int(bags.n_bags), "n_instances": len(bags.bag)}
        return self

    # -- prediction ---------------------------------------------------------------------------------
    def _forward_bags(self, bags: Bags, *, chunk: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bag probabilities, instance attention and instance probabilities (instances in ``bags`` order)."""
        self._check_fitted()
        device = resolve_device(self.params["device"])
        self.net_.to(device)
        X = torch.as_tensor((bags.X - self.feature_mean_) / self.feature_std_, device=device)
        members = _members(bags)
        proba = np.empty((bags.n_bags, len(self.classes_)), dtype=np.float32)
        attn = np.empty(len(bags.bag), dtype=np.float32)
        inst = np.empty((len(bags.bag), len(self.classes_)), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, bags.n_bags, chunk):
                chosen = np.arange(s, min(s + chunk, bags.n_bags))
                idx = np.concatenate([members[b] for b in chosen])
                local = np.repeat(np.arange(len(chosen)), [len(members[b]) for b in chosen])
                logits, a, il = self.net_(X[idx], torch.as_tensor(local, device=device), len(chosen))
                proba[chosen] = torch.softmax(logits, dim=1).cpu().numpy()
                attn[idx] = a.cpu().numpy()
                inst[idx] = torch.softmax(il, dim=1).cpu().numpy()
        return proba, attn, inst

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
        proba, _, _ = self._forward_bags(bags)
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
        _, attn, _ = self._forward_bags(bags)
        adatas = [data] if isinstance(data, AnnData) else list(data)
        out = []
        for i, ad in enumerate(adatas):
            values = np.full(ad.n_obs, np.nan, dtype=np.float32)
            values[bags.rows[i]] = attn[bags.offsets[i] : bags.offsets[i + 1]]
            out.append(pd.Series(values, index=ad.obs_names.copy(), name="attention"))
        return out[0] if isinstance(data, AnnData) else out

    # -- persistence --------------------------------------------------------------------------------
    _state_arrays = ("feature_mean_", "feature_std_", "use_rep_")
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
        net = _MILNet(
            len(self.feature_mean_), p["hidden_dim"], p["attention_dim"], len(self.classes_), p["dropout"], p["pooling"]
        )
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


def _members(bags: Bags) -> list[np.ndarray]:
    """Positions (into ``bags.X``) of each bag's instances."""
    order = np.argsort(bags.bag, kind="stable")
    return np.split(order, np.cumsum(bags.sizes())[:-1])
