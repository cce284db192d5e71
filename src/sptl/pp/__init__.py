"""Preprocessing: spatial graphs."""

from ._graph import spatial_graph

__all__ = ["spatial_graph"]
