"""Bag-level labels by multiple-instance learning, cross-validated over bags."""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scanpy import logging as logg
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

from .. import _keys, _validate
from .._docs import inject_docs
from .._progress import progress_bar
from ..models._abmil import ABMIL, POOLINGS, Bags, collect_bags


@inject_docs
def mil(
    adata: AnnData,
    /,
    *,
    bag_key: str,
    label_key: str,
    use_rep: str,
    groups_key: str | None = None,
    n_splits: int | None = 5,
    pooling: str = "attention",
    model_kwargs: Mapping[str, Any] | None = None,
    key_added: str = _keys.MIL,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Learn bag labels from instances with attention-based MIL, cross-validated over bags.

    Observations are grouped into bags (``obs[bag_key]``: the tiles of a slide, the spots of a
    region, the cells of a sample), each bag carries one label, and :class:`sptl.models.ABMIL` learns
    it from the instance features ``obsm[use_rep]``. Bags are split into ``n_splits`` folds
    (stratified by label; with ``groups_key``, bags of one group, for example a patient, stay in one
    fold): each fold's bags are predicted by a model trained on the other folds. Every bag thus gets
    an out-of-fold prediction, and every instance the attention its bag's held-out model gives it,
    which shows the tissue regions that drive the label.

    Parameters
    ----------
    {adata}
    bag_key
        Column of ``.obs`` naming each observation's bag. Observations where it is missing are in no
        bag: they are ignored and get NaN results.
    label_key
        Column of ``.obs`` with the bag label, the same for every observation of a bag.
    use_rep
        Key of ``.obsm`` with the instance features (for example ``"X_pca"`` or a histology embedding).
    groups_key
        Column of ``.obs`` with a grouping of bags (for example the patient) that folds must not
        split; the same for every observation of a bag.
    n_splits
        Number of folds. ``None`` with ``groups_key``: leave one group out.
    pooling
        ``"attention"`` (gated attention on top of the mean of the instance embeddings, see
        :class:`sptl.models.ABMIL`), or the baselines ``"mean"`` and ``"max"``.
    model_kwargs
        Further arguments of :class:`sptl.models.ABMIL` (for example ``{"max_epochs": 100}``, or
        ``{"residual": False, "dropout": 0.25, "weight_decay": 1e-4}`` for the settings of earlier sptl
        versions); they are checked before anything is computed.
    {key_added}
    {device}
    {seed}
    {progress}
    {copy}

    Returns
    -------
    ``None``, or the annotated copy of ``adata`` if ``copy=True``. Written:

    - ``obs[f"{key_added}_attention"]``: each instance's attention weight within its bag (sums to 1
      over a bag; from the model that held the bag out),
    - ``obsm[f"{key_added}_evidence"]``: each instance's contribution to its bag's class logits times
      the bag size, centred over classes (:meth:`sptl.models.ABMIL.evidence`; a DataFrame with one
      column per class). Attention says how much an instance counts, evidence also for which class
      (on the HER2ST bags of ``benchmarks/mil.py`` it ranks the cancer spots of positive bags at 0.68
      against 0.62 for attention; connective tissue spots at 0.62, as attention does),
    - ``obsm[f"{key_added}_instance_probabilities"]``: class probabilities of each instance alone (a
      bag of one), a DataFrame with one column per class,
    - ``uns[key_added]``: ``params``, ``classes``, ``bags`` (DataFrame indexed by bag id: ``label``,
      out-of-fold ``prediction``, ``fold``, ``n_instances`` and, with ``groups_key``, ``group``),
      ``probabilities`` (DataFrame of out-of-fold bag class probabilities) and ``scores`` (bag-level
      ``auc``, ``accuracy`` and ``balanced_accuracy`` of the out-of-fold predictions; ``auc`` is
      one-vs-rest macro for more than two classes).

    Examples
    --------
    >>> import numpy as np, anndata as ad, sptl
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(np.zeros((600, 1)), obsm={"X_feat": rng.normal(size=(600, 8))})
    >>> adata.obs["bag"] = np.repeat(np.arange(60), 10).astype(str)
    >>> positive = np.repeat(np.arange(60) % 2 == 1, 10)
    >>> key = positive & (np.arange(600) % 10 < 3)  # three key instances in each positive bag
    >>> adata.obsm["X_feat"][key, 0] += 3
    >>> adata.obs["label"] = np.where(positive, "pos", "neg")
    >>> sptl.tl.mil(adata, bag_key="bag", label_key="label", use_rep="X_feat", n_splits=3, progress=False)
    >>> adata.uns["sptl_mil"]["scores"]["auc"] > 0.9
    True
    >>> att = adata.obs["sptl_mil_attention"]
    >>> bool(att[key].mean() > att[positive & ~key].mean())
    True
    """
    start = perf_counter()
    _validate.check_adata(adata, "adata")
    _validate.check_choice(pooling, "pooling", POOLINGS)
    extra = dict(model_kwargs or {})
    for name in ("pooling", "device", "seed"):
        if name in extra:
            msg = f"Pass `{name}=` to `sptl.tl.mil` itself, not in `model_kwargs`."
            raise ValueError(msg)
    # building the model checks its arguments before anything is computed
    ABMIL(pooling=pooling, device=device, seed=seed, **extra)
    bags = collect_bags(adata, bag_key=bag_key, use_rep=use_rep, label_key=label_key)
    groups = _bag_groups(adata, bags, groups_key, bag_key)
    folds = _folds(bags, groups, groups_key=groups_key, n_splits=n_splits, seed=seed)
    params = {
        "bag_key": bag_key,
        "label_key": label_key,
        "use_rep": use_rep,
        "groups_key": groups_key,
        "n_splits": len(folds),
        "pooling": pooling,
        "model_kwargs": extra,
        "seed": seed,
    }
    logg.info(
        f"multiple-instance learning of `{label_key}` over {bags.n_bags} bags of `{bag_key}`"
        f" ({len(bags.bag)} instances, {len(folds)} folds, {pooling} pooling)"
    )

    classes = sorted(bags.labels.unique())
    proba = np.full((bags.n_bags, len(classes)), np.nan, dtype=np.float32)
    attn = np.full(len(bags.bag), np.nan, dtype=np.float32)
    inst = np.full((len(bags.bag), len(classes)), np.nan, dtype=np.float32)
    evid = np.full((len(bags.bag), len(classes)), np.nan, dtype=np.float32)
    fold_of = np.full(bags.n_bags, -1, dtype=np.int64)
    for k, (train, test) in enumerate(progress_bar(folds, enabled=progress, desc="mil: folds", total=len(folds))):
        model = ABMIL(pooling=pooling, device=device, seed=seed + k, **extra)
        model._fit_bags(_subset(bags, train), use_rep=use_rep, progress=False)
        held = _subset(bags, test)
        p, a, ip, ev = model._forward_bags(held)
        cols = [classes.index(c) for c in model.classes_]
        proba[np.ix_(test, cols)] = p
        proba[np.ix_(test, [j for j in range(len(classes)) if j not in cols])] = 0.0
        inside = np.flatnonzero(np.isin(bags.bag, test))
        attn[inside] = a
        inst[np.ix_(inside, cols)] = ip
        evid[np.ix_(inside, cols)] = ev
        fold_of[test] = k
    inst = np.nan_to_num(inst, nan=0.0)
    evid = np.nan_to_num(evid, nan=0.0)

    truth = bags.labels.to_numpy()
    pred = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
    scores = {
        "auc": _auc(truth, proba, classes),
        "accuracy": float(accuracy_score(truth, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, pred)),
    }
    table = pd.DataFrame(
        {
            "label": pd.Categorical(truth, categories=classes),
            "prediction": pd.Categorical(pred, categories=classes),
            "fold": fold_of,
            "n_instances": bags.sizes(),
        },
        index=bags.names.copy(),
    )
    if groups is not None:
        table["group"] = pd.Categorical(groups)

    # write everything at once
    out = adata.copy() if copy else adata
    att_col = np.full(out.n_obs, np.nan, dtype=np.float32)
    att_col[bags.rows[0]] = attn
    inst_full = np.full((out.n_obs, len(classes)), np.nan, dtype=np.float32)
    inst_full[bags.rows[0]] = inst
    evid_full = np.full((out.n_obs, len(classes)), np.nan, dtype=np.float32)
    evid_full[bags.rows[0]] = evid
    out.obs[_keys.attention(key_added)] = att_col
    out.obsm[_keys.evidence(key_added)] = pd.DataFrame(evid_full, index=out.obs_names.copy(), columns=pd.Index(classes))
    out.obsm[_keys.instance_probabilities(key_added)] = pd.DataFrame(
        inst_full, index=out.obs_names.copy(), columns=pd.Index(classes)
    )
    out.uns[key_added] = {
        "params": params,
        "classes": list(classes),
        "bags": table,
        "probabilities": pd.DataFrame(proba, index=bags.names.copy(), columns=pd.Index(classes)),
        "scores": scores,
    }
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): bag AUC {scores['auc']:.3f}; added\n"
        f"    'obs[{_keys.attention(key_added)!r}]', 'obsm[{_keys.instance_probabilities(key_added)!r}]',"
        f" 'obsm[{_keys.evidence(key_added)!r}]',"
        f" 'uns[{key_added!r}]'"
    )
    return out if copy else None


def _bag_groups(adata: AnnData, bags: Bags, groups_key: str | None, bag_key: str) -> np.ndarray | None:
    """The group of every bag, checked to be constant within each bag."""
    if groups_key is None:
        return None
    if groups_key not in adata.obs:
        msg = f"`adata.obs[{groups_key!r}]` not found (obs columns: {list(adata.obs.columns)}): pass `groups_key=`."
        raise KeyError(msg)
    col = adata.obs[groups_key].iloc[bags.rows[0]]
    if col.isna().any():
        msg = f"`adata.obs[{groups_key!r}]` is missing for {int(col.isna().sum())} observations in bags."
        raise ValueError(msg)
    frame = pd.DataFrame({"bag": bags.bag, "group": col.astype(str).to_numpy()})
    n_values = frame.groupby("bag")["group"].nunique()
    if (n_values > 1).any():
        ex = bags.names[int(n_values.index[n_values > 1][0])]
        msg = (
            f"`adata.obs[{groups_key!r}]` varies within {int((n_values > 1).sum())} bag(s) of `obs[{bag_key!r}]`"
            f" (for example {ex!r}): a bag belongs to one group."
        )
        raise ValueError(msg)
    return frame.groupby("bag")["group"].first().reindex(np.arange(bags.n_bags)).to_numpy()


def _folds(
    bags: Bags, groups: np.ndarray | None, *, groups_key: str | None, n_splits: int | None, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train / test bag indices of every fold; each training side holds at least two classes."""
    y = bags.labels.to_numpy()
    dummy = np.zeros((bags.n_bags, 1))
    if n_splits is None:
        if groups is None:
            msg = "`n_splits=None` means leave one group out: pass `groups_key=` too, or an integer `n_splits`."
            raise ValueError(msg)
        if len(np.unique(groups)) < 2:
            msg = f"`obs[{groups_key!r}]` has a single group: leaving one group out needs at least two."
            raise ValueError(msg)
        splits = list(LeaveOneGroupOut().split(dummy, y, groups))
    else:
        n_units = bags.n_bags if groups is None else len(np.unique(groups))
        if not 2 <= int(n_splits) <= n_units:
            unit = "bags" if groups is None else f"groups of `obs[{groups_key!r}]`"
            msg = f"`n_splits` must lie between 2 and the number of {unit} ({n_units}), got {n_splits!r}."
            raise ValueError(msg)
        smallest = int(pd.Series(y).value_counts().min())
        if groups is None and smallest < n_splits:
            msg = (
                f"The rarest bag class has {smallest} bag(s), fewer than `n_splits={n_splits}`: lower `n_splits`"
                " or add bags of that class."
            )
            raise ValueError(msg)
        if groups is None:
            cv = StratifiedKFold(n_splits=int(n_splits), shuffle=True, random_state=seed)
            splits = list(cv.split(dummy, y))
        else:
            cv = StratifiedGroupKFold(n_splits=int(n_splits), shuffle=True, random_state=seed)
            splits = list(cv.split(dummy, y, groups))
    for k, (train, _) in enumerate(splits):
        if len(np.unique(y[train])) < 2:
            msg = (
                f"Fold {k} would train on bags of one class only ({np.unique(y[train]).tolist()}): use fewer folds or"
                " groups that each hold a mix of classes."
            )
            raise ValueError(msg)
    return splits


def _subset(bags: Bags, chosen: np.ndarray) -> Bags:
    """The bags ``chosen`` (indices), renumbered; instances keep their relative order."""
    keep = np.isin(bags.bag, chosen)
    remap = np.full(bags.n_bags, -1, dtype=np.int64)
    remap[chosen] = np.arange(len(chosen))
    return Bags(
        X=bags.X[keep],
        bag=remap[bags.bag[keep]],
        names=bags.names[chosen],
        labels=None if bags.labels is None else bags.labels.iloc[chosen],
        rows=[np.flatnonzero(keep)],
        offsets=[0, int(keep.sum())],
    )


def _auc(truth: np.ndarray, proba: np.ndarray, classes: list[str]) -> float:
    """Bag-level ROC AUC (one-vs-rest macro average for more than two classes)."""
    if len(classes) == 2:
        return float(roc_auc_score(truth == classes[1], proba[:, 1]))
    return float(roc_auc_score(truth, proba, labels=classes, multi_class="ovr", average="macro"))
