"""The 12 spatialLIBD human DLPFC Visium sections with manual cortical-layer labels (Maynard et al. 2021).

Too large to ship: the files are downloaded once into the sptl cache and checked on every later load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .._validate import check_choice
from ._registry import cache_dir as _cache_dir
from ._visium import read_visium_folder

#: Section ids: donor 1 (151507-151510), donor 2 (151669-151672), donor 3 (151673-151676).
DLPFC_SAMPLES: tuple[str, ...] = (
    "151507", "151508", "151509", "151510",
    "151669", "151670", "151671", "151672",
    "151673", "151674", "151675", "151676",
)  # fmt: skip
#: Layer categories of ``obs['layer']``, from the pia to the white matter.
DLPFC_LAYERS: tuple[str, ...] = ("Layer1", "Layer2", "Layer3", "Layer4", "Layer5", "Layer6", "WM")

LAYER_FILE = "barcode_level_layer_map.tsv"
_S3 = "https://spatial-dlpfc.s3.us-east-2.amazonaws.com"
_GITHUB = "https://raw.githubusercontent.com/LieberInstitute/HumanPilot/master"
#: Where each file comes from: path in the cache (and in a ``path=`` folder) -> URL template. Per
#: section, the files form a Space Ranger output folder ``{sample}/``; the layer map is shared.
DLPFC_URLS: dict[str, str] = {
    "{sample}/filtered_feature_bc_matrix.h5": _S3 + "/h5/{sample}_filtered_feature_bc_matrix.h5",
    "{sample}/spatial/tissue_positions_list.csv": _GITHUB + "/10X/{sample}/tissue_positions_list.txt",
    "{sample}/spatial/scalefactors_json.json": _GITHUB + "/10X/{sample}/scalefactors_json.json",
    "{sample}/spatial/tissue_lowres_image.png": _S3 + "/images/{sample}_tissue_lowres_image.png",
    LAYER_FILE: _GITHUB + "/Analysis/Layer_Guesses/First_Round/" + LAYER_FILE,
}
#: Known sha256 of every file (cache path -> hex digest). ``None``: not yet known; the digest seen on
#: the first download is then recorded in the cache (``sha256.json``) and enforced from then on.
DLPFC_SHA256: dict[str, str | None] = {
    **{rel.format(sample=s): None for s in DLPFC_SAMPLES for rel in DLPFC_URLS if rel != LAYER_FILE},
    LAYER_FILE: None,
}
RECORD_FILE = "sha256.json"

_BARCODE = re.compile(r"^[ACGTN]+-\d+$")


def dlpfc(
    sample_id: str = "151673",
    *,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> AnnData:
    """One human dorsolateral prefrontal cortex section (10x Visium, spatialLIBD) with layer labels.

    Twelve sections from three donors, manually annotated with the six cortical layers and the
    white matter: the usual benchmark for spatial domain detection and label transfer. Not bundled:
    the first call downloads about 20-40 MB per section into the sptl cache.

    Parameters
    ----------
    sample_id
        Section id, one of ``DLPFC_SAMPLES`` (``"151507"`` ... ``"151676"``).
    path
        Local folder laid out like the cache, used offline instead of downloading: a Space Ranger
        output folder ``{sample_id}/`` (``filtered_feature_bc_matrix.h5`` and ``spatial/`` with
        ``tissue_positions_list.csv``, ``scalefactors_json.json``, ``tissue_lowres_image.png`` and,
        optionally, ``tissue_hires_image.png``) next to the layer map ``barcode_level_layer_map.tsv``.
    cache_dir
        Download cache; default ``$SPTL_DATA_DIR``, else the user cache folder of the OS. The files
        go to ``{cache_dir}/dlpfc/``. Ignored when ``path`` is given.

    Returns
    -------
    Spots under tissue x genes (gene symbols, made unique), raw integer counts (sparse CSR
    ``int32``) in ``.X``, with

    - ``obsm['spatial']``: spot centres in full-resolution image pixels (x, y), ``float64``,
    - ``obs['layer']``: manual annotation, categorical with categories ``DLPFC_LAYERS``
      (``Layer1`` ... ``Layer6``, ``WM``); missing (NaN) for unlabelled spots,
    - ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']``, ``obs['sample_id']``,
    - ``var['gene_ids']``, ``var['feature_types']``, ``var['genome']``,
    - ``uns['spatial'][sample_id]`` with ``'images'`` (``'lowres'``; also ``'hires'`` when a
      ``path`` folder has it, the download skips it), ``'scalefactors'`` and ``'metadata'``, as
      :func:`squidpy.read.visium` writes them.

    Raises
    ------
    ValueError
        If ``sample_id`` is unknown, or if a cached file's sha256 differs from the known or first
        recorded one (delete the file named in the message to download it again).

    Notes
    -----
    Files and hosts (``DLPFC_URLS``): the count matrices ``h5/{id}_filtered_feature_bc_matrix.h5``
    and lowres images ``images/{id}_tissue_lowres_image.png`` from the LIBD bucket
    ``spatial-dlpfc.s3.us-east-2.amazonaws.com``; spot positions ``10X/{id}/tissue_positions_list.txt``,
    scale factors ``10X/{id}/scalefactors_json.json`` and the barcode-level layer map
    ``Analysis/Layer_Guesses/First_Round/barcode_level_layer_map.tsv`` from the study's repository
    github.com/LieberInstitute/HumanPilot. The layer map may hold one row per barcode and section
    (barcode, section id, layer) or, for a single section, barcode and layer; layers written
    ``1``...``6``, ``L1``, ``Layer 1`` or ``Layer_1`` are read as ``Layer1``, and ``WM`` as ``WM``.

    Integrity: ``DLPFC_SHA256`` holds the published digests where known; otherwise the digest of
    the first download is recorded in ``{cache_dir}/dlpfc/sha256.json`` (trust on first use) and
    every later load checks the cached files against it.

    Source: spatialLIBD, research.libd.org/spatialLIBD. Paper: Maynard K.R. et al.,
    "Transcriptome-scale spatial gene expression in the human dorsolateral prefrontal cortex",
    Nat Neurosci 24:425-436 (2021). Licence: the study's public data release (spatialLIBD code is
    Artistic-2.0); cite the paper.

    Examples
    --------
    >>> import sptl
    >>> sptl.datasets.DLPFC_SAMPLES[:4]
    ('151507', '151508', '151509', '151510')
    >>> adata = sptl.datasets.dlpfc("151673")  # doctest: +SKIP
    >>> adata.obs["layer"].value_counts()  # doctest: +SKIP
    """
    check_choice(sample_id, "sample_id", DLPFC_SAMPLES)
    if path is None:
        folder = fetch_dlpfc(sample_id, cache_dir=cache_dir)
    else:
        folder = Path(path)
        if not (folder / sample_id).is_dir():
            msg = f"{folder / sample_id} not found: `path` must hold a folder per section ({sample_id}/)."
            raise FileNotFoundError(msg)
    return read_dlpfc_raw(folder, sample_id)


def read_dlpfc_raw(path: str | os.PathLike, sample_id: str) -> AnnData:
    """Read section ``sample_id`` from a folder laid out like the cache (see :func:`dlpfc`)."""
    folder = Path(path)
    adata = read_visium_folder(folder / sample_id, library_id=sample_id)
    layer_file = folder / LAYER_FILE
    if not layer_file.exists():
        msg = f"{layer_file} not found: the layer map must sit next to the section folders."
        raise FileNotFoundError(msg)
    layers = read_layer_map(layer_file, sample_id)
    adata.obs["sample_id"] = pd.Categorical([sample_id] * adata.n_obs)
    adata.obs["layer"] = pd.Categorical(layers.reindex(adata.obs_names).to_numpy(), categories=DLPFC_LAYERS)
    return adata


def read_layer_map(path: str | os.PathLike, sample_id: str) -> pd.Series:
    """Layer of each barcode of section ``sample_id`` in a barcode-level layer map (TSV or CSV)."""
    text = Path(path).read_text()
    sep = "\t" if "\t" in text.split("\n", 1)[0] else ","
    table = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False)
    if table.shape[1] < 2:
        msg = f"{path}: expected columns barcode[, section], layer; found {table.shape[1]} column."
        raise ValueError(msg)
    if not _BARCODE.match(str(table.iloc[0, 0]).strip()):  # a header row
        table = table.iloc[1:]
    table = table.apply(lambda col: col.str.strip())
    if table.shape[1] >= 3:
        sections = table.iloc[:, 1:-1]
        table = table[(sections == sample_id).any(axis=1)]
    barcodes, raw = table.iloc[:, 0], table.iloc[:, -1]
    labels = raw.map(_normalise_layer)
    bad = sorted(set(raw[labels.isna() & ~raw.isin(["", "NA", "nan", "NaN"])]))
    if bad:
        msg = f"{path}: unknown layer labels {bad[:5]}; expected {list(DLPFC_LAYERS)} (or 1-6, L1, WM)."
        raise ValueError(msg)
    series = pd.Series(labels.to_numpy(), index=pd.Index(barcodes.to_numpy()), dtype=object)
    return series[~series.index.duplicated()]


def _normalise_layer(value: str) -> str | float:
    value = value.strip()
    if value.upper() == "WM":
        return "WM"
    match = re.fullmatch(r"(?:layer|l)?[\s_]*([1-6])", value, flags=re.IGNORECASE)
    return f"Layer{match.group(1)}" if match else np.nan


def fetch_dlpfc(sample_id: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download section ``sample_id`` and the layer map into the cache if needed; check every sha256.

    Returns the cache folder (``{cache_dir}/dlpfc``), laid out as :func:`dlpfc`'s ``path`` expects.
    """
    from scanpy import logging as logg

    check_choice(sample_id, "sample_id", DLPFC_SAMPLES)
    folder = _cache_dir(cache_dir) / "dlpfc"
    record_file = folder / RECORD_FILE
    record: dict[str, str] = json.loads(record_file.read_text()) if record_file.exists() else {}
    for template, url_template in DLPFC_URLS.items():
        rel = template.format(sample=sample_id)
        target = folder / rel
        if not target.exists():
            url = url_template.format(sample=sample_id)
            logg.info(f"downloading {url}")
            target.parent.mkdir(parents=True, exist_ok=True)
            _download(url, target)
        digest = _sha256(target)
        expected = DLPFC_SHA256.get(rel) or record.get(rel)
        if expected is None:
            record[rel] = digest
            record_file.parent.mkdir(parents=True, exist_ok=True)
            record_file.write_text(json.dumps(record, indent=1, sort_keys=True))
        elif digest != expected:
            msg = (
                f"sha256 of {target} is {digest}, expected {expected}: the file is corrupt or changed "
                "upstream. Delete it to download it again."
            )
            raise ValueError(msg)
    return folder


def _download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` (atomically, via pooch)."""
    import pooch

    pooch.retrieve(url, known_hash=None, fname=target.name, path=target.parent, progressbar=False)


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
