"""Trainable transfer models (``fit`` / ``predict`` / ``save`` / ``load``)."""

from ._abmil import ABMIL
from ._base import TransferModel
from ._clip import SpatialCLIP
from ._encoders import register_open_clip_configs
from ._gnn import RelationalTransfer
from ._histology import HistologyRegressor
from ._knn import KNNTransfer
from ._tradaboost import TrAdaBoost

__all__ = [
    "ABMIL",
    "HistologyRegressor",
    "KNNTransfer",
    "RelationalTransfer",
    "SpatialCLIP",
    "TrAdaBoost",
    "TransferModel",
    "register_open_clip_configs",
]
