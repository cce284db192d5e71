"""Preprocessing: spatial graphs."""

from ._graph import spatial_graph
from ._patches import PatchDataset, extract_patches
from ._tile import tile_image, tile_spots

__all__ = ["PatchDataset", "extract_patches", "spatial_graph", "tile_image", "tile_spots"]
