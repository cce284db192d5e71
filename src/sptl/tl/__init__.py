"""Tools: transfer results computed into the target AnnData."""

from ._align import align_slices
from ._clip import annotate_zero_shot, embed_clip, predict_expression, retrieve
from ._histology import embed_histology
from ._integrate import integrate
from ._mil import mil
from ._shift import domain_shift
from ._transfer import transfer_labels
from ._transferability import NegativeTransferWarning, rank_sources, transferability
from ._weights import instance_weights

__all__ = [
    "NegativeTransferWarning",
    "align_slices",
    "annotate_zero_shot",
    "domain_shift",
    "embed_clip",
    "embed_histology",
    "instance_weights",
    "integrate",
    "mil",
    "predict_expression",
    "rank_sources",
    "retrieve",
    "transfer_labels",
    "transferability",
]
