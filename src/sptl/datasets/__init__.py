"""Real public spatial datasets, bundled with sptl or downloaded into a cache."""

from ._her2st import HER2ST_LABELLED, HER2ST_SECTIONS, her2st

__all__ = ["HER2ST_LABELLED", "HER2ST_SECTIONS", "her2st"]
