"""TrAdaBoost: boosting over many labelled source spots and a few labelled target spots."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
from sklearn.tree._tree import Tree

from .._progress import progress_bar
from ._base import FORMAT_VERSION, read_checkpoint, write_checkpoint

ESTIMATORS = ("logistic", "tree")


class TrAdaBoost(ClassifierMixin, BaseEstimator):
    """Multi-class TrAdaBoost: transfer from a labelled source with a few labelled target samples.

    Boosting in the spirit of Dai et al. (2007), multi-class as in SAMME (Zhu et al. 2009), with
    the correction of dynamic TrAdaBoost (Al-Stouhi & Reddy 2011). Each round fits a base classifier
    on source and target together with sample weights. The error is measured on the target only;
    misclassified target samples gain weight (as in AdaBoost), while misclassified source samples
    lose weight (they look unlike the target), so later rounds rely on the source samples that agree
    with the target. The prediction is the ``alpha``-weighted average of the class probabilities of
    the last half of the rounds.

    A scikit-learn estimator (``get_params``, ``set_params``, ``score``) working on feature arrays, for
    example the joint PCA of :class:`sptl.models.KNNTransfer` (``model.transform(adata)``). Column
    names of DataFrames are stored and checked at prediction time.

    Parameters
    ----------
    estimator
        Base classifier: ``"logistic"`` (multinomial logistic regression, class-balanced) or
        ``"tree"`` (decision tree of depth ``max_depth``).
    n_estimators
        Number of boosting rounds.
    learning_rate
        Shrinks every round's ``alpha`` (and the target re-weighting).
    C
        Inverse regularisation strength of ``"logistic"``.
    max_depth
        Depth of ``"tree"``.
    target_share
        Share of the total sample weight the labelled target samples start with (the rest is spread
        over the source samples); Dai et al.'s uniform start is ``n_target / (n_source + n_target)``.
    min_target_labels
        Fewest labelled target samples accepted by :meth:`fit`.
    seed
        Random seed of the base classifiers.

    Examples
    --------
    >>> import numpy as np
    >>> from sptl.models import TrAdaBoost
    >>> rng = np.random.default_rng(0)
    >>> Xs = rng.normal(size=(300, 5))
    >>> ys = (Xs[:, 0] > 0).astype(int)
    >>> Xt = rng.normal(size=(60, 5)) + [0.5, 0, 0, 0, 0]
    >>> yt = (Xt[:, 0] > 0.5).astype(int)
    >>> model = TrAdaBoost(n_estimators=10).fit(Xs, ys, Xt[:20], yt[:20])
    >>> bool(model.score(Xt[20:], yt[20:]) > 0.8)
    True
    """

    def __init__(
        self,
        estimator: str = "logistic",
        n_estimators: int = 20,
        learning_rate: float = 1.0,
        C: float = 1.0,
        max_depth: int = 3,
        target_share: float = 0.5,
        min_target_labels: int = 5,
        seed: int = 0,
    ) -> None:
        self.estimator = estimator
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.C = C
        self.max_depth = max_depth
        self.target_share = target_share
        self.min_target_labels = min_target_labels
        self.seed = seed

    # -- checks --------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.estimator not in ESTIMATORS:
            msg = f"`estimator={self.estimator!r}` is not valid; choose one of {list(ESTIMATORS)}."
            raise ValueError(msg)
        for name in ("n_estimators", "max_depth", "min_target_labels"):
            if int(getattr(self, name)) < 1:
                msg = f"`{name}` must be a positive integer, got {getattr(self, name)!r}."
                raise ValueError(msg)
        if not self.learning_rate > 0 or not self.C > 0:
            msg = f"`learning_rate` and `C` must be positive, got {self.learning_rate!r} and {self.C!r}."
            raise ValueError(msg)
        if not 0 < self.target_share < 1:
            msg = f"`target_share` must lie in (0, 1), got {self.target_share!r}."
            raise ValueError(msg)

    def _check_X(self, X: Any, name: str, *, fitting: bool = False) -> np.ndarray:
        cols = list(map(str, X.columns)) if isinstance(X, pd.DataFrame) else None
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            msg = f"`{name}` must be a non-empty 2-D array (samples x features), got shape {arr.shape}."
            raise ValueError(msg)
        if not np.isfinite(arr).all():
            msg = f"`{name}` holds NaN or infinite values."
            raise ValueError(msg)
        if fitting:
            return arr
        if arr.shape[1] != self.n_features_in_:
            msg = f"`{name}` has {arr.shape[1]} features, this model was fitted on {self.n_features_in_}."
            raise ValueError(msg)
        known = getattr(self, "feature_names_in_", None)
        if known is not None and cols is not None and cols != list(known):
            diff = [c for c in cols if c not in set(known)][:5]
            msg = (
                f"`{name}` has other columns than the model was fitted on (for example {diff}): pass the same"
                " features in the same order."
            )
            raise ValueError(msg)
        return arr

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimators_"):
            msg = "This TrAdaBoost is not fitted yet: call `.fit(...)` or `TrAdaBoost.load(path)`."
            raise RuntimeError(msg)

    def _base(self) -> LogisticRegression | DecisionTreeClassifier:
        if self.estimator == "logistic":
            return LogisticRegression(C=self.C, max_iter=1000, class_weight="balanced")
        return DecisionTreeClassifier(max_depth=int(self.max_depth), random_state=self.seed)

    # -- training ------------------------------------------------------------------------------------
    def fit(
        self,
        X_source: Any,
        y_source: Any,
        X_target: Any,
        y_target: Any,
        *,
        sample_weight: Any = None,
        progress: bool = False,
    ) -> TrAdaBoost:
        """Fit on labelled source samples and a few labelled target samples.

        Parameters
        ----------
        X_source
            Source features (samples x features), array or DataFrame.
        y_source
            Source labels; missing values (``None``/NaN) are dropped.
        X_target
            Features of the labelled target samples, same columns as ``X_source``.
        y_target
            Their labels (at least ``min_target_labels``).
        sample_weight
            Initial weights of the source samples (for example from :func:`sptl.tl.instance_weights`);
            uniform when ``None``.
        progress
            Show a progress bar over the boosting rounds.

        Returns
        -------
        The fitted estimator.
        """
        self._check_params()
        Xs = self._check_X(X_source, "X_source", fitting=True)
        Xt = self._check_X(X_target, "X_target", fitting=True)
        if Xs.shape[1] != Xt.shape[1]:
            msg = f"`X_source` has {Xs.shape[1]} features but `X_target` has {Xt.shape[1]}: use the same features."
            raise ValueError(msg)
        ys, keep_s = _labels(y_source, len(Xs), "y_source")
        yt, keep_t = _labels(y_target, len(Xt), "y_target")
        if keep_t.sum() < int(self.min_target_labels):
            msg = (
                f"TrAdaBoost needs at least `min_target_labels={self.min_target_labels}` labelled target samples,"
                f" got {int(keep_t.sum())}: label more target spots or use a source-only transfer."
            )
            raise ValueError(msg)
        ws = np.ones(len(Xs)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if ws.shape != (len(Xs),) or not np.isfinite(ws).all() or (ws < 0).any() or ws[keep_s].sum() <= 0:
            msg = (
                f"`sample_weight` must hold {len(Xs)} finite non-negative numbers, not all zero, one per source sample."
            )
            raise ValueError(msg)
        Xs, ys, ws, Xt, yt = Xs[keep_s], ys[keep_s], ws[keep_s], Xt[keep_t], yt[keep_t]
        classes = np.array(sorted(set(ys) | set(yt)))
        if len(classes) < 2:
            msg = f"Source and target labels hold {len(classes)} class(es) {list(classes)}: at least two are needed."
            raise ValueError(msg)
        self.feature_names_in_ = (
            np.array(list(map(str, X_source.columns)), dtype=object) if isinstance(X_source, pd.DataFrame) else None
        )
        if self.feature_names_in_ is None:
            del self.feature_names_in_
        self.n_features_in_ = Xs.shape[1]
        self.classes_ = classes

        n, m, K = len(Xs), len(Xt), len(classes)
        X = np.vstack([Xs, Xt])
        # base classifiers learn integer codes; ``classes_`` maps them back
        y = np.searchsorted(classes, np.concatenate([ys, yt]).astype(classes.dtype))
        w = np.concatenate([ws / ws.sum() * (1 - self.target_share), np.full(m, self.target_share / m)])
        beta_src = 1.0 / (1.0 + np.sqrt(2.0 * np.log(n) / int(self.n_estimators)))
        estimators, alphas, errors = [], [], []
        rounds = range(int(self.n_estimators))
        for _ in progress_bar(rounds, enabled=progress, desc="TrAdaBoost", total=len(rounds)):
            est = self._base().fit(X, y, sample_weight=w / w.sum() * len(w))
            miss = est.predict(X) != y
            wt = w[n:]
            eps = float((wt * miss[n:]).sum() / wt.sum())
            if eps >= 1 - 1 / K:  # no better than chance on the target: stop
                if not estimators:
                    estimators, alphas, errors = [est], [1e-3], [eps]
                break
            eps = max(eps, 1e-10)
            alpha = self.learning_rate * (np.log((1 - eps) / eps) + np.log(K - 1))
            estimators.append(est)
            alphas.append(float(alpha))
            errors.append(eps)
            if eps <= 1e-10:
                break
            # target: AdaBoost up-weighting; their total grows by K (1 - eps), the dynamic correction
            # multiplies the source by the same factor so source weights do not collapse too early
            w[n:] *= np.exp(alpha * miss[n:])
            w[:n] *= beta_src ** miss[:n] * min(K * (1 - eps), 1e6)
            w /= w.sum()
        self.estimators_ = estimators
        self.alphas_ = np.asarray(alphas)
        self.errors_ = np.asarray(errors)
        self.n_source_, self.n_target_ = n, m
        return self

    # -- prediction ----------------------------------------------------------------------------------
    def _used(self) -> range:
        """Rounds that vote: the last half (at least one)."""
        T = len(self.estimators_)
        return range(T // 2, T)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (columns in ``classes_`` order): ``alpha``-weighted mean over the voting rounds."""
        self._check_fitted()
        arr = self._check_X(X, "X")
        out = np.zeros((len(arr), len(self.classes_)))
        total = 0.0
        for t in self._used():
            est, a = self.estimators_[t], self.alphas_[t]
            cols = np.asarray(est.classes_, dtype=np.intp)
            out[:, cols] += a * est.predict_proba(arr)
            total += a
        return out / max(total, 1e-12)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class of every sample."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted ensemble to ``path`` (``.npz`` with a JSON header; no pickle)."""
        self._check_fitted()
        header = {
            "class": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "feature_names": None if getattr(self, "feature_names_in_", None) is None else list(self.feature_names_in_),
            "n_source": int(self.n_source_),
            "n_target": int(self.n_target_),
            "estimator_classes": [e.classes_.tolist() for e in self.estimators_],
            "tree_meta": [],
        }
        arrays: dict[str, np.ndarray] = {"alphas": self.alphas_, "errors": self.errors_}
        for i, est in enumerate(self.estimators_):
            if isinstance(est, LogisticRegression):
                arrays[f"coef_{i}"], arrays[f"intercept_{i}"] = est.coef_, est.intercept_
            else:
                state = est.tree_.__getstate__()
                arrays[f"nodes_{i}"], arrays[f"values_{i}"] = state["nodes"], state["values"]
                header["tree_meta"].append(
                    {"max_depth": int(state["max_depth"]), "node_count": int(state["node_count"])}
                )
        write_checkpoint(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrAdaBoost:
        """Load a model written by :meth:`save`; refuses files of another class or format."""
        header, arrays = read_checkpoint(path, cls.__name__)
        model = cls(**header["params"])
        model.classes_ = np.array(header["classes"])
        model.n_features_in_ = header["n_features_in"]
        if header["feature_names"] is not None:
            model.feature_names_in_ = np.array(header["feature_names"], dtype=object)
        model.n_source_, model.n_target_ = header["n_source"], header["n_target"]
        model.alphas_, model.errors_ = arrays["alphas"], arrays["errors"]
        estimators = []
        for i, est_classes in enumerate(header["estimator_classes"]):
            est = model._base()
            est.classes_ = np.array(est_classes, dtype=np.int64)
            est.n_features_in_ = model.n_features_in_
            if model.estimator == "logistic":
                est.coef_, est.intercept_ = arrays[f"coef_{i}"], arrays[f"intercept_{i}"]
            else:
                meta = header["tree_meta"][i]
                tree = Tree(model.n_features_in_, np.array([len(est_classes)], dtype=np.intp), 1)
                tree.__setstate__({**meta, "nodes": arrays[f"nodes_{i}"], "values": arrays[f"values_{i}"]})
                est.tree_, est.n_classes_, est.n_outputs_ = tree, len(est_classes), 1
                est.max_features_ = model.n_features_in_
            estimators.append(est)
        model.estimators_ = estimators
        return model


def _labels(y: Any, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as an array (strings, or integers when all are integers) and the mask of known ones."""
    s = pd.Series(np.asarray(y, dtype=object))
    if len(s) != n:
        msg = f"`{name}` has {len(s)} labels for {n} samples."
        raise ValueError(msg)
    keep = s.notna().to_numpy()
    known = s[keep]
    if len(known) and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in known):
        return np.where(keep, s.to_numpy(), 0).astype(np.int64), keep
    return np.where(keep, s.astype(str).to_numpy(), "").astype(str), keep
