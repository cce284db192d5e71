"""Preprocessing: spatial graphs."""

from ._graph import spatial_graph
from ._patches import PatchDataset, extract_patches

__all__ = ["PatchDataset", "extract_patches", "spatial_graph"]
