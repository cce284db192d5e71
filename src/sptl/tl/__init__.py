"""Tools: transfer results computed into the target AnnData."""

from ._align import align_slices
from ._histology import embed_histology
from ._transfer import transfer_labels

__all__ = ["align_slices", "embed_histology", "transfer_labels"]
