"""Tools: transfer results computed into the target AnnData."""

from ._align import align_slices
from ._histology import embed_histology
from ._mil import mil
from ._shift import domain_shift
from ._transfer import transfer_labels
from ._weights import instance_weights

__all__ = ["align_slices", "domain_shift", "embed_histology", "instance_weights", "mil", "transfer_labels"]
