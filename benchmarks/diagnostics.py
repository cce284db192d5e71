"""Transfer diagnostics on HER2ST: do the unsupervised scores predict the real transfer quality?

Every ordered pair of labelled HER2ST sections from different patients (30 pairs), as in
``label_transfer.py``: scored on the target spots whose pathologist label the source has,
``undetermined`` excluded.

1. Spearman correlation, over the 30 pairs, between each score of :func:`sptl.tl.transferability`
   (no target labels) and the real macro-F1 of :func:`sptl.tl.transfer_labels` (knn, defaults);
   also the mean Spearman within each target (ranking the 5 candidate sources of one target, what
   :func:`sptl.tl.rank_sources` does), the best-source hits and the mean macro-F1 of the source each
   score picks. The committee scores ``agreement`` and ``committee_score`` come from
   :func:`sptl.tl.rank_sources` run once per target with its 5 candidate sources (each candidate's
   accuracy estimated from how often its transfer agrees with the other 4).
2. Negative transfer, defined per pair as: the knn transfer's macro-F1 on the 95% held-out target
   spots is below that of a class-balanced logistic regression trained on a random 5% of the target's
   labelled spots (same joint PCA features). Share of pairs where each warning is right: the
   unsupervised one (``score < min_score``) and the one with the 5% labels (``target_label_key=``).
3. Honest protocol for the headline's one fitted number (the weight ``a`` in
   ``marker_auc * expected_f1 * exp(a * class_coverage)``, ``score`` at ``a = 5``) and for ``min_score``:
   picked on the pairs whose target is from patients A-C and scored on targets D-F (and the reverse), and
   leave-one-target-patient-out (picked on the 25 pairs of the other 5 targets, scored on the held-out
   target's 5 pairs, pooled). The same for the former headlines' families ``expected_f1 * exp(a *
   class_coverage)`` (``coverage_score``) and ``expected_f1 * exp(a * coverage)``, and for the committee
   family ``agreement * marker_auc * expected_f1 * exp(a * class_coverage)`` (``committee_score``) and the
   former committee family without ``marker_auc``.
4. With 5% of the target's labels or importance weights, on the 95% held-out spots: unweighted knn
   transfer, knn transfer with :func:`sptl.tl.instance_weights` (classifier / KMM / KLIEP),
   :class:`sptl.models.TrAdaBoost` (logistic base, 20 rounds), a logistic regression on source + 5%
   target pooled, and target-only training.
5. A check on pairs the scores were not designed on: transfers between sections of one patient (every
   ordered pair of sections 1-4 of patients A-D and 1-3 of patients E-H, 72 pairs) on the study clusters
   (``obs['cluster']``, labels no score was tuned with); Spearman of each score with the real macro-F1
   of the knn transfer, over all 72 pairs and within each target.

Run: ``python benchmarks/diagnostics.py`` (about 12 minutes on 2 busy cores; ``--skip-within`` leaves
out part 5).
"""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression

import sptl
from sptl.datasets import HER2ST_LABELLED
from sptl.metrics import label_scores
from sptl.tl._transferability import COMMITTEE_SCORES
from sptl.tl._transferability import SCORES as TRANSFERABILITY_SCORES

EXCL = ["undetermined"]
SHARE = 0.05
SCORES = [*TRANSFERABILITY_SCORES, *COMMITTEE_SCORES]
LOWER_IS_BETTER = ("entropy", "mmd2")
WEIGHTS = (0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8)
THRESHOLDS = np.round(np.arange(0.30, 0.80, 0.01), 2)
FIRST_HALF = ("A1", "B1", "C1")


def few_labels(tgt, seed: int = 0) -> np.ndarray:
    """Positions of a random 5% (at least 5) of the target's labelled, non-excluded spots."""
    lab = tgt.obs["label"].astype(str)
    pool = np.flatnonzero(~lab.isin([*EXCL, "nan"]).to_numpy())
    n = max(5, round(SHARE * len(pool)))
    return np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))


def knn(src, tgt, **kw) -> np.ndarray:
    tgt = tgt.copy()
    sptl.tl.transfer_labels(src, tgt, label_key="label", exclude=EXCL, progress=False, **kw)
    return tgt.obs["sptl_label"].astype(str).to_numpy()


def run_pair(src, tgt) -> dict:
    classes = sorted(set(src.obs["label"].dropna().astype(str)) - set(EXCL))
    truth = tgt.obs["label"].astype(object).to_numpy()
    few = few_labels(tgt)
    test = np.setdiff1d(np.arange(tgt.n_obs), few)

    def f1(pred, rows=None):
        rows = np.arange(tgt.n_obs) if rows is None else rows
        return label_scores(truth[rows], np.asarray(pred)[rows], labels=classes)["macro_f1"]

    row: dict = {}
    pred = knn(src, tgt)
    row["f1"] = f1(pred)
    row["knn"] = f1(pred, test)

    # unsupervised scores, then with the 5% labels
    t = tgt.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sptl.tl.NegativeTransferWarning)
        sptl.tl.transferability(src, t, label_key="label", exclude=EXCL)
        res = t.uns["sptl_transferability"]
        row.update(res["scores"])
        row["warn_unsup"] = res["negative_transfer"]
        t.obs["few"] = pd.Series(truth, index=t.obs_names).where(np.isin(np.arange(t.n_obs), few))
        sptl.tl.transferability(src, t, label_key="label", exclude=EXCL, target_label_key="few")
        row["warn_5pct"] = t.uns["sptl_transferability"]["negative_transfer"]

    # features shared by the array-based learners: the knn transfer's joint PCA
    model = sptl.models.KNNTransfer().fit(src, label_key="label", target=tgt, exclude=EXCL, progress=False)
    Xs, Xt = model.transform(src), model.transform(tgt)
    ys = src.obs["label"].astype(object).where(~src.obs["label"].astype(str).isin([*EXCL, "nan"]), None)
    keep = ys.notna().to_numpy()
    ys = ys.to_numpy()
    yt = truth[few].astype(str)
    if len(set(yt)) > 1:
        own = LogisticRegression(max_iter=1000, class_weight="balanced").fit(Xt[few], yt).predict(Xt)
    else:
        own = np.repeat(yt[0], tgt.n_obs)
    row["target only (5%)"] = f1(own, test)
    row["negative"] = row["knn"] < row["target only (5%)"]
    pooled = LogisticRegression(max_iter=1000, class_weight="balanced")
    pooled.fit(np.vstack([Xs[keep], Xt[few]]), np.r_[ys[keep].astype(str), yt])
    row["logreg source + 5% target"] = f1(pooled.predict(Xt), test)
    boost = sptl.models.TrAdaBoost().fit(Xs, ys, Xt[few], yt)
    row["TrAdaBoost (5%)"] = f1(boost.predict(Xt), test)

    for method in ("classifier", "kmm", "kliep"):
        s = src.copy()
        sptl.tl.instance_weights(s, tgt, method=method)
        row[f"knn + {method} weights"] = f1(knn(s, tgt, weights_key="sptl_weight"), test)
    return row


WITHIN_SECTIONS = {p: 4 if p in "ABCD" else 3 for p in "ABCDEFGH"}
WITHIN_SCORES = ("score", "coverage_score", "marker_auc", "expected_f1", "class_coverage", "score_global", "source_f1")


def within_patient() -> pd.DataFrame:
    """Part 5: transfers between sections of one patient on the study clusters, scores vs real macro-F1."""
    rows = []
    for patient, n in WITHIN_SECTIONS.items():
        secs = {}
        for i in range(1, n + 1):
            s = sptl.datasets.her2st(f"{patient}{i}")
            s.obs["study_cluster"] = s.obs["cluster"].astype(str).where(s.obs["cluster"].notna())
            secs[f"{patient}{i}"] = s
        for a, b in itertools.permutations(secs, 2):
            src, tgt = secs[a], secs[b].copy()
            classes = sorted(set(src.obs["study_cluster"].dropna()))
            pred = tgt.copy()
            sptl.tl.transfer_labels(src, pred, label_key="study_cluster", progress=False)
            truth = tgt.obs["study_cluster"].astype(object).to_numpy()
            f1 = label_scores(truth, pred.obs["sptl_label"].astype(str).to_numpy(), labels=classes)["macro_f1"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sptl.tl.NegativeTransferWarning)
                sptl.tl.transferability(src, tgt, label_key="study_cluster")
            rows.append({"source": a, "target": b, "f1": f1, **tgt.uns["sptl_transferability"]["scores"]})
    return pd.DataFrame(rows)


def within_table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for c in WITHIN_SCORES:
        within = [spearmanr(g[c], g["f1"])[0] for _, g in df.groupby("target")]
        out.append(
            {
                "score": c,
                f"Spearman with macro-F1 ({len(df)} within-patient pairs)": spearmanr(df[c], df["f1"])[0],
                "mean Spearman within a target": np.nanmean(within),
            }
        )
    return pd.DataFrame(out).set_index("score")


def main(within: bool = True) -> pd.DataFrame:
    sc.settings.verbosity = 0
    data = {s: sptl.datasets.her2st(s) for s in HER2ST_LABELLED}
    rows = []
    for a, b in itertools.permutations(HER2ST_LABELLED, 2):
        start = time.perf_counter()
        row = {"source": a, "target": b, **run_pair(data[a], data[b])}
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{a}->{b}: f1 {row['f1']:.3f} score {row['score']:.3f} ({row['seconds']:.0f}s)", flush=True)
    df = pd.DataFrame(rows).set_index(["source", "target"])
    for b in HER2ST_LABELLED:  # committee scores: the 5 candidate sources of each target together
        t = data[b].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sptl.tl.NegativeTransferWarning)
            sptl.tl.rank_sources({a: data[a] for a in HER2ST_LABELLED if a != b}, t, label_key="label", exclude=EXCL)
        ranking = t.uns["sptl_sources"]["ranking"]
        for a in ranking.index:
            df.loc[(a, b), ["agreement", "committee_score"]] = ranking.loc[
                a, ["agreement", "committee_score"]
            ].to_numpy()
    df = df.reset_index()
    print(f"\nHER2ST transfer diagnostics, {len(df)} ordered cross-patient pairs\n")
    print(_md(score_table(df)))
    print()
    print(_md(warning_table(df)))
    print()
    print(_md(protocol_table(df)))
    print()
    print(_md(method_table(df)))
    if within:
        w = within_patient()
        print(f"\nWithin-patient check: {len(w)} ordered pairs of sections of one patient, study clusters\n")
        print(_md(within_table(w)))
    return df


def score_table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for s in SCORES:
        sign = -1 if s in LOWER_IS_BETTER else 1
        rho = spearmanr(sign * df[s], df["f1"])[0]
        within = [spearmanr(sign * g[s], g["f1"])[0] for _, g in df.groupby("target")]
        picked = [g.loc[(sign * g[s]).idxmax(), "f1"] for _, g in df.groupby("target")]
        top1 = sum(p == g["f1"].max() for p, (_, g) in zip(picked, df.groupby("target"), strict=True))
        out.append(
            {
                "score": s + (" (lower is better)" if sign < 0 else ""),
                "Spearman with macro-F1 (30 pairs)": rho,
                "mean Spearman within target (5 sources)": np.nanmean(within),
                "best source picked (of 6 targets)": top1,
                "mean macro-F1 of the picked source": np.mean(picked),
            }
        )
    out.append(
        {
            "score": "(reference) best source",
            "mean macro-F1 of the picked source": df.groupby("target")["f1"].max().mean(),
        }
    )
    out.append({"score": "(reference) random source", "mean macro-F1 of the picked source": df["f1"].mean()})
    return pd.DataFrame(out).set_index("score")


def warning_table(df: pd.DataFrame) -> pd.DataFrame:
    truth = df["negative"].astype(bool)
    df = df.assign(warn_always=True)
    out = []
    for col, name in (
        ("warn_unsup", "no target labels: score < min_score"),
        ("warn_5pct", "5% target labels"),
        ("warn_always", "always warn (baseline)"),
    ):
        w = df[col].astype(bool)
        out.append(
            {
                "warning": name,
                "pairs with negative transfer": int(truth.sum()),
                "warnings raised": int(w.sum()),
                "share right": float((w == truth).mean()),
                "precision": float((w & truth).sum() / max(w.sum(), 1)),
                "recall": float((w & truth).sum() / max(truth.sum(), 1)),
            }
        )
    return pd.DataFrame(out).set_index("warning")


def _family(df: pd.DataFrame, cov: str, a: float) -> pd.Series:
    factor = {
        "marker": df["marker_auc"],  # = score at a = 5
        "class_coverage": 1.0,  # = coverage_score at a = 5
        "coverage": 1.0,
        "committee": df["agreement"] * df["marker_auc"],  # = committee_score at a = 5
        "committee_old": df["agreement"],
    }[cov]
    return factor * df["expected_f1"] * np.exp(a * df["coverage" if cov == "coverage" else "class_coverage"])


def _pick_weight(df: pd.DataFrame, cov: str) -> float:
    return max(WEIGHTS, key=lambda a: spearmanr(_family(df, cov, a), df["f1"])[0])


def _pick_threshold(score: pd.Series, negative: pd.Series) -> float:
    return float(max(THRESHOLDS, key=lambda t: ((score < t) == negative).mean()))


def protocol_table(df: pd.DataFrame) -> pd.DataFrame:
    """The headline's weight and min_score picked on some targets, scored on the others."""
    negative = df["negative"].astype(bool)
    first = df["target"].isin(FIRST_HALF)
    out = []
    for cov, name in (
        ("marker", "marker_auc * expected_f1 * exp(a * class_coverage) (score)"),
        ("class_coverage", "expected_f1 * exp(a * class_coverage) (coverage_score)"),
        ("coverage", "expected_f1 * exp(a * coverage)"),
        ("committee", "agreement * marker_auc * expected_f1 * exp(a * class_coverage) (committee_score)"),
        ("committee_old", "agreement * expected_f1 * exp(a * class_coverage)"),
    ):
        row: dict = {"family": name}
        for label, pick in (("A-C -> D-F", first), ("D-F -> A-C", ~first)):
            a = _pick_weight(df[pick], cov)
            row[f"a picked on {label[:3]}"] = a
            row[f"Spearman {label}"] = spearmanr(_family(df[~pick], cov, a), df.loc[~pick, "f1"])[0]
        for label, part in (("A-C", first), ("D-F", ~first)):
            row[f"Spearman {label} at a = 5"] = spearmanr(_family(df[part], cov, 5), df.loc[part, "f1"])[0]
        held = pd.Series(np.nan, index=df.index)
        right, top1, within, picked = [], 0, [], []
        for t in sorted(df["target"].unique()):
            train = df["target"] != t
            a = _pick_weight(df[train], cov)
            s = _family(df, cov, a)
            thr = _pick_threshold(s[train], negative[train])
            held[~train] = s[~train]
            right += list((s[~train] < thr) == negative[~train])
            g = df[~train]
            top1 += int(g.loc[s[~train].idxmax(), "f1"] == g["f1"].max())
            within.append(spearmanr(s[~train], g["f1"])[0])
            picked.append(f"{a:g}/{thr:.2f}")
        row["LOTO: Spearman (30 held-out pairs pooled)"] = spearmanr(held, df["f1"])[0]
        row["LOTO: mean Spearman within target"] = np.mean(within)
        row["LOTO: best source picked"] = f"{top1}/{df['target'].nunique()}"
        row["LOTO: warning right"] = float(np.mean(right))
        row["LOTO: a/min_score per fold"] = " ".join(picked)
        out.append(row)
    return pd.DataFrame(out).set_index("family")


def method_table(df: pd.DataFrame) -> pd.DataFrame:
    methods = [
        "knn",
        "knn + classifier weights",
        "knn + kmm weights",
        "knn + kliep weights",
        "TrAdaBoost (5%)",
        "logreg source + 5% target",
        "target only (5%)",
    ]
    out = []
    for m in methods:
        out.append(
            {
                "method": m,
                "mean macro-F1 (95% held out)": df[m].mean(),
                "median": df[m].median(),
                "pairs above knn": int((df[m] > df["knn"] + 1e-9).sum()) if m != "knn" else np.nan,
                "pairs below knn": int((df[m] < df["knn"] - 1e-9).sum()) if m != "knn" else np.nan,
            }
        )
    return pd.DataFrame(out).set_index("method")


def _md(df: pd.DataFrame) -> str:
    try:
        return df.round(3).to_markdown()
    except ImportError:
        return df.round(3).to_string()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--skip-within", action="store_true", help="leave out part 5 (within-patient check)")
    main(within=not parser.parse_args().skip_within)
