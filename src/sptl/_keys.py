"""Every key name sptl reads or writes in an AnnData, built in one place.

Functions and plots call these helpers instead of spelling keys themselves, so two
functions never disagree on where a result lives.
"""

from __future__ import annotations

#: Default ``obsm`` key of spatial coordinates (squidpy / scanpy convention).
SPATIAL = "spatial"
#: Default ``uns`` key of Visium images and scale factors.
SPATIAL_UNS = "spatial"
#: Default ``key_added`` of :func:`sptl.tl.transfer_labels`.
TRANSFER = "sptl_label"
#: Label that open-set methods give to observations that fit no source class.
UNASSIGNED = "unassigned"


def confidence(key_added: str) -> str:
    """``obs`` column with the confidence of a transferred label."""
    return f"{key_added}_confidence"


def entropy(key_added: str) -> str:
    """``obs`` column with the entropy of the class probabilities behind a transferred label."""
    return f"{key_added}_entropy"


def probabilities(key_added: str) -> str:
    """``obsm`` key of the per-class probabilities (a DataFrame, one column per class)."""
    return f"{key_added}_probabilities"


def embedding(key_added: str) -> str:
    """``obsm`` key of the embedding a result was computed in."""
    return f"X_{key_added}"


def params(key_added: str) -> tuple[str, str]:
    r"""``uns`` location of the parameters that produced a result: ``uns[key][\"params\"]``."""
    return key_added, "params"


def connectivities(key: str) -> str:
    """``obsp`` key of a graph's connectivities (squidpy convention)."""
    return f"{key}_connectivities"


def distances(key: str) -> str:
    """``obsp`` key of a graph's distances (squidpy convention)."""
    return f"{key}_distances"


def spatial_neighbors(key: str = SPATIAL) -> str:
    """``uns`` / ``obsp`` stem squidpy uses for a spatial graph built on ``obsm[key]``."""
    return f"{key}_neighbors"


# --- alignment and integration (sptl.tl.align_slices, sptl.tl.integrate) ---
#: Default ``key_added`` of :func:`sptl.tl.align_slices`: aligned coordinates go to ``obsm[key_added]``.
ALIGN = "spatial_aligned"
#: Default ``key_added`` of :func:`sptl.tl.integrate`: the embedding goes to ``obsm["X_" + key_added]``.
INTEGRATE = "sptl_integrated"


def match(key_added: str) -> str:
    """``obs`` column with each spot's best match (obs name) in the slice it was aligned with."""
    return f"{key_added}_match"


def match_mass(key_added: str) -> str:
    """``obs`` column with the share of a spot's mass transported to its best match."""
    return f"{key_added}_match_mass"


def aligned_library(library_id: str, key_added: str) -> str:
    """``uns['spatial']`` library holding a section's images moved into the aligned frame."""
    return f"{library_id}_{key_added}"


def aligned_3d(key_added: str) -> str:
    """``obsm`` key of the aligned coordinates with the section's height as a third column."""
    return f"{key_added}_3d"


# -- histology: patches, image encoders and CLIP models (issue 5) ----------------------------------
#: Default ``key_added`` of :func:`sptl.pp.extract_patches`: ``uns[PATCHES]["params"]`` describes the patches.
PATCHES = "patches"
#: Default ``key_added`` of :func:`sptl.tl.embed_histology` (``obsm["X_histology"]``).
HISTOLOGY = "histology"
#: Default ``key_added`` of :func:`sptl.tl.embed_clip`.
CLIP = "clip"
#: Default ``key_added`` of :func:`sptl.tl.predict_expression`.
PREDICTED_EXPRESSION = "predicted_expression"
#: Default ``key_added`` of :func:`sptl.tl.annotate_zero_shot`.
ZERO_SHOT = "zero_shot"
#: Default ``key_added`` of :func:`sptl.tl.retrieve`.
RETRIEVAL = "retrieval"


def patch_coverage(key_added: str) -> str:
    """``obs`` column with the fraction of each patch that lies inside the image."""
    return f"{key_added}_coverage"


def patch_tissue(key_added: str) -> str:
    """``obs`` column with the fraction of each patch that lies on tissue (a thumbnail's tissue mask)."""
    return f"{key_added}_tissue"


def clip_embedding(key_added: str, modality: str) -> str:
    """``obsm`` key of a CLIP embedding of one modality (``"image"`` or ``"expression"``)."""
    return f"X_{key_added}_{modality}"


def scores(key_added: str) -> str:
    """``obsm`` key of per-class or per-neighbour scores (a DataFrame or an array)."""
    return f"{key_added}_scores"


def indices(key_added: str) -> str:
    """``obsm`` key of the integer positions of retrieved neighbours."""
    return f"{key_added}_indices"


def rank(key_added: str) -> str:
    """``obs`` column with the rank of each observation's own partner among retrieved matches (1 = best)."""
    return f"{key_added}_rank"


# -- domain shift, instance weights, transferability (issue 6) ---------------------------------------
#: Default ``key_added`` of :func:`sptl.tl.domain_shift` (``uns``).
SHIFT = "sptl_shift"
#: Default ``key_added`` of :func:`sptl.tl.instance_weights` (``obs`` of the source).
WEIGHT = "sptl_weight"
#: Default ``key_added`` of :func:`sptl.tl.transferability` (``uns`` of the target).
TRANSFERABILITY = "sptl_transferability"
#: Default ``key_added`` of :func:`sptl.tl.rank_sources` (``uns`` of the target).
RANK_SOURCES = "sptl_sources"


# -- multiple-instance learning and tiling (sptl.tl.mil, sptl.models.ABMIL, sptl.pp.tile_image / tile_spots) --
#: Default ``key_added`` of :func:`sptl.tl.mil`.
MIL = "sptl_mil"
#: Default ``key_added`` of :func:`sptl.pp.tile_spots` (the ``obs`` column of region / bag ids).
TILE_SPOTS = "sptl_tile"
#: ``obs`` column of :func:`sptl.pp.tile_image` with the slide each tile comes from.
SLIDE = "slide"


def attention(key_added: str) -> str:
    """``obs`` column with each instance's attention weight within its bag (MIL)."""
    return f"{key_added}_attention"


def evidence(key_added: str) -> str:
    """``obsm`` key of each instance's contribution to its bag's class logits, times the bag size (MIL)."""
    return f"{key_added}_evidence"


def instance_probabilities(key_added: str) -> str:
    """``obsm`` key of per-instance class probabilities (a DataFrame, one column per class; MIL)."""
    return f"{key_added}_instance_probabilities"
