"""Tools: transfer results computed into the target AnnData."""

from ._transfer import transfer_labels

__all__ = ["transfer_labels"]
