"""Scores for judging a transfer against known answers."""

from ._labels import label_scores

__all__ = ["label_scores"]
