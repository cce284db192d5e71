"""The ``sptl`` command line: ``sptl demo`` runs a label transfer on bundled real data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter


def demo(
    source: str = "F1",
    target: str = "D1",
    out: str | Path = "sptl_demo",
    *,
    progress: bool = True,
    device: str | None = None,
) -> dict[str, float | int]:
    """Transfer HER2ST pathologist labels from one patient's section to another's and score them.

    Writes ``{out}/her2st_{target}_from_{source}.h5ad`` and ``.png`` and returns the scores.
    """
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    from tqdm import tqdm

    from . import datasets, pl, tl
    from .metrics import label_scores

    sc.settings.verbosity = 1
    if source[0] == target[0]:
        print(f"note: {source} and {target} come from the same patient ({source[0]}).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = perf_counter()
    bar = tqdm(total=4, desc="sptl demo: load", disable=not progress, leave=False, dynamic_ncols=True)
    src, tgt = datasets.her2st(source), datasets.her2st(target)
    tqdm.write(f"source {source}: {src.n_obs} spots x {src.n_vars} genes (patient {source[0]})")
    tqdm.write(f"target {target}: {tgt.n_obs} spots x {tgt.n_vars} genes (patient {target[0]})")
    bar.update()
    bar.set_description("sptl demo: transfer")
    # this bar tracks the stages; transfer_labels' own bars would interleave with it
    tl.transfer_labels(src, tgt, label_key="label", exclude=["undetermined"], device=device, progress=False)
    bar.update()
    bar.set_description("sptl demo: score and write")
    scores = label_scores(tgt.obs["label"], tgt.obs["sptl_label"], labels=tgt.uns["sptl_label"]["classes"])
    stem = out / f"her2st_{target}_from_{source}"
    tgt.write_h5ad(stem.with_suffix(".h5ad"), compression="gzip")
    bar.update()
    bar.set_description("sptl demo: plot")
    pl.transfer(
        tgt,
        truth_key="label",
        title=f"HER2ST {source} -> {target}: accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}",
        save=stem.with_suffix(".png"),
        show=False,
    )
    bar.update()
    bar.close()
    print(
        f"label transfer {source} -> {target} (knn, {perf_counter() - start:.1f}s), scored on "
        f"{scores['n_scored']} target spots whose pathologist label the source has:"
    )
    print(f"  accuracy  {scores['accuracy']:.3f}")
    print(f"  macro-F1  {scores['macro_f1']:.3f}")
    print(f"wrote {stem.with_suffix('.h5ad')} and {stem.with_suffix('.png')}")
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sptl`` console script."""
    from . import __version__
    from .datasets import HER2ST_LABELLED

    parser = argparse.ArgumentParser(prog="sptl", description="Spatial-omics transfer learning.")
    parser.add_argument("--version", action="version", version=f"sptl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="transfer pathologist labels between two bundled HER2ST sections")
    d.add_argument("--source", default="F1", choices=HER2ST_LABELLED, help="labelled source section")
    d.add_argument("--target", default="D1", choices=HER2ST_LABELLED, help="target section (scored)")
    d.add_argument("--out", default="sptl_demo", help="output folder")
    d.add_argument("--device", default=None, help="torch device (default: CUDA if available)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.source == args.target:
            parser.error("--source and --target must differ")
        demo(args.source, args.target, args.out, progress=not args.no_progress, device=args.device)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
