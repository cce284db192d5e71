"""Shared numpy-docstring fragments, filled into public docstrings with :func:`inject_docs`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_fragments = {
    "adata": """adata
    Annotated data matrix, observations (spots or cells) by genes.""",
    "source": """source
    Annotated source data, or a list of them (each is one batch). Raw counts in ``.X`` (or in
    ``layers[layer]``); every source must carry ``obs[label_key]``.""",
    "target": """target
    Annotated target data that receives the results. Raw counts in ``.X`` (or in ``layers[layer]``).""",
    "key_added": """key_added
    Key under which results are written; every derived key is built from it.""",
    "copy": """copy
    If ``True``, work on a copy of the target and return it; if ``False``, write into the given
    AnnData and return ``None``.""",
    "device": """device
    Torch device for the heavy computation (``"cpu"``, ``"cuda"``, ``"cuda:1"``...). ``None`` picks
    CUDA when it is available and the CPU otherwise.""",
    "progress": """progress
    Show a progress bar (tqdm). Set to ``False`` in scripts and CI logs.""",
    "spatial_key": """spatial_key
    Key in ``.obsm`` with the spatial coordinates.""",
    "layer": """layer
    Layer holding raw counts; ``None`` uses ``.X``.""",
    "seed": """seed
    Random seed; the same seed gives the same result.""",
    "plot_common": """ax
    Matplotlib axes to draw into (one per panel); new ones are created when ``None``.
show
    Show the figure; when ``False`` the axes are returned.
save
    Path of a file to write the figure to (format from the suffix).""",
}


def inject_docs(func: F) -> F:
    """Fill ``{adata}``, ``{copy}``... placeholders of ``func.__doc__`` with the shared fragments.

    Fragments are indented to the level of the placeholder, so multi-line texts stay valid numpy
    docstrings.
    """
    doc = func.__doc__
    if doc:
        lines = []
        for line in doc.splitlines():
            stripped = line.strip()
            if stripped.startswith("{") and stripped.endswith("}") and stripped[1:-1] in _fragments:
                indent = line[: len(line) - len(line.lstrip())]
                frag = _fragments[stripped[1:-1]]
                lines.extend(indent + fl if fl else fl for fl in frag.splitlines())
            else:
                lines.append(line)
        func.__doc__ = "\n".join(lines)
    return func
