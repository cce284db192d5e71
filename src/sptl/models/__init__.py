"""Trainable transfer models (``fit`` / ``predict`` / ``save`` / ``load``)."""

from ._base import TransferModel
from ._knn import KNNTransfer

__all__ = ["KNNTransfer", "TransferModel"]
