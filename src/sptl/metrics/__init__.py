"""Scores for judging a transfer against known answers."""

from ._alignment import alignment_accuracy, displacement, match_accuracy
from ._integration import batch_mixing, label_conservation
from ._labels import label_scores

__all__ = [
    "alignment_accuracy",
    "batch_mixing",
    "displacement",
    "label_conservation",
    "label_scores",
    "match_accuracy",
]
