"""Relational transfer: a graph neural network over the spatial neighbour graph."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from torch import nn
from torch.nn import functional as F

from .. import _keys, _validate
from .._device import resolve_device
from .._progress import progress_bar
from ..pp._expression import PANEL_GENES, fit_pca_space, standardized
from ..pp._graph import REGION_COHERENCE, build_graph, check_graph, choose_smooth, spread_labels
from ._adapt import grad_reverse, mmd
from ._base import TransferModel, class_sizes, labels_from_proba, source_weights
from ._knn import _l2, knn_vote

ENCODERS = ("gat", "sage", "gcn")
SAMPLERS = ("auto", "tiles", "neighbor")
ADAPTATIONS = ("mmd", "dann", "self_training")
#: What ``adaptation="auto"`` may use. Self-training only when the source labels form tissue regions
#: (label coherence >= :data:`sptl.pp._graph.REGION_COHERENCE`; HER2ST regions 0.6-0.83): the knn teacher's
#: strength is spreading its votes over the target's graph. For cell types intermixed in space (coherence
#: about 0.15) it is a plain knn vote, weaker than the network: on MERFISH cell classes self-training from
#: it cost 0.05-0.06 macro-F1, while on the 30 cross-patient HER2ST pairs it lifts the gnn above the knn.
AUTO_ADAPTATION = ("dann", "self_training")
#: Source spots that vote in the knn teacher of self-training (a random subset above this, for speed).
TEACHER_MAX_SOURCE = 50_000
#: Neighbours that vote in the knn teacher (as :class:`KNNTransfer`'s default).
TEACHER_NEIGHBORS = 15
#: Principal components used as node features (``n_comps=None``) for transcriptomes (more genes than
#: :data:`sptl.pp._expression.PANEL_GENES`; a targeted panel keeps all of them), where the leading
#: components carry the signal and the rest mostly noise: on the 30 cross-patient HER2ST pairs mean
#: macro-F1 0.454 / 0.486 / 0.474 / 0.453 with 30 / 50 / 100 / 200 components; on the 155-gene MERFISH
#: panel 0.698 with 100 and 0.719 with all components.
TRANSCRIPTOME_COMPS = 50


class _Net(nn.Module):
    """Graph encoder (GAT / GraphSAGE / GCN from PyG) with a label head and a domain head."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        encoder: str,
        hidden: int,
        n_layers: int,
        heads: int,
        dropout: float,
        cosine: bool = False,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GATConv, GCNConv, SAGEConv

        self.inp = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(n_layers):
            # messages come from the neighbours only: a node's own state passes through the residual path
            if encoder == "gat":
                conv = GATConv(hidden, hidden // heads, heads=heads, dropout=dropout, add_self_loops=False)
            elif encoder == "sage":
                conv = SAGEConv(hidden, hidden, root_weight=False)
            else:
                conv = GCNConv(hidden, hidden, add_self_loops=False)
            self.convs.append(conv)
            self.norms.append(nn.LayerNorm(hidden))
        # how much each layer adds of the neighbours' messages, learned from the data and starting at 0: the
        # network uses a node's neighbourhood as features where they help (tissue regions, niches) and
        # keeps to the node's own expression where they do not (cell types intermixed in space)
        self.gates = nn.Parameter(torch.zeros(n_layers))
        self.dropout = dropout
        self.head = nn.Linear(hidden, n_classes, bias=not cosine)
        self.cosine = cosine
        self.domain = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def embed(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.inp(F.dropout(x, self.dropout, self.training)))
        for conv, norm, gate in zip(self.convs, self.norms, self.gates, strict=True):
            h = norm(h + gate * F.elu(conv(F.dropout(h, self.dropout, self.training), edge_index)))
        return h

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x, edge_index)
        if self.cosine:  # prototype head: cosine similarity to class weights, temperature 0.1
            logits = F.normalize(h, dim=-1) @ F.normalize(self.head.weight, dim=-1).T / 0.1
            return logits, h
        return self.head(h), h


class RelationalTransfer(TransferModel):
    """Label transfer with a graph neural network trained on annotated source sections.

    Every section becomes a graph (spots or cells as nodes, spatial neighbours as edges, from
    :func:`sptl.pp.spatial_graph`); node features are the section-standardised joint PCA of the
    shared genes (as in :class:`KNNTransfer`). A PyG encoder (GAT by default) learns how a spot's label
    follows from its own expression and its neighbourhood, and the learned relational patterns are
    applied to new sections. Domain adaptation aligns source and target embeddings while training.

    Parameters
    ----------
    encoder
        ``"gat"`` (graph attention), ``"sage"`` (GraphSAGE) or ``"gcn"``.
    hidden
        Width of the hidden layers and of the embedding.
    n_layers
        Message-passing layers (the receptive field in graph hops).
    heads
        Attention heads of GAT layers.
    dropout
        Dropout on features and attention.
    adaptation
        Domain adaptation while training with a target: ``None``, ``"mmd"`` (maximum mean discrepancy
        between source and target embeddings), ``"dann"`` (gradient reversal with a domain
        classifier), ``"self_training"`` (target pseudo-labels from a knn teacher, see below), a list
        of them, or ``"auto"``: DANN, plus self-training when the source labels form spatially coherent
        regions (label coherence of at least 0.5, see ``smooth`` of :func:`sptl.tl.transfer_labels`);
        cell types intermixed in space learn better from the source alone than from a knn teacher.
        Self-training: a cosine knn vote of the source spots (as :class:`KNNTransfer`) labels the
        target spots, the votes are spread over the target's spatial graph (label spreading, with the
        weight that the spatial coherence of the source labels sets, as ``smooth="auto"`` of
        :func:`sptl.tl.transfer_labels`), and the most confident ``pseudo_label_share`` of the spots
        given each class become pseudo-labels that the network also learns from, so it picks up the
        target's own relational patterns.
    adaptation_weight
        Weight of the adaptation losses.
    pseudo_label_share
        Share of the target spots the teacher assigns to each class that become pseudo-labels (the
        most confident first; per class, so rare classes get pseudo-labels too).
    balance
        Class-balanced cross-entropy (weights inverse to class frequency) for rare labels.
    unassigned_threshold
        Open set: observations whose top probability is below this become ``"unassigned"``.
    head
        ``"cosine"``: class prototypes compared by cosine similarity (temperature 0.1), which transfers
        better across patients than ``"linear"`` (a plain linear layer).
    normalize
        Give every node's principal components unit length (cosine geometry, as the knn vote uses)
        instead of scaling each component to unit variance.
    n_genes
        Highly variable genes chosen on the source.
    n_comps
        Principal components used as node features. ``None``: all of them for a targeted panel (at
        most 500 genes used), else 50.
    n_neighs
        Neighbours per node when the graph is built on the fly.
    max_epochs
        Training epochs.
    lr
        Learning rate (AdamW).
    weight_decay
        Weight decay (AdamW).
    tile_size
        Largest number of nodes in one mini-batch (seed nodes with ``sampler="neighbor"``): larger
        sections are cut into spatial tiles with a halo of ``n_layers`` hops, so memory grows linearly
        with the number of cells.
    sampler
        How training mini-batches are drawn: ``"tiles"`` (spatial tiles with a halo, needs nothing but
        PyG), ``"neighbor"`` (PyG's :class:`~torch_geometric.loader.NeighborLoader` on random seed
        nodes with their full ``n_layers``-hop neighbourhood; needs ``pyg-lib`` or ``torch-sparse``) or
        ``"auto"`` (``"neighbor"`` when one of those imports, else ``"tiles"``). Prediction always uses
        tiles with a halo, which is exact.
    device
        Torch device; ``None`` picks CUDA when available.
    seed
        Random seed (features, weights, tiles, dropout).

    Examples
    --------
    >>> import sptl
    >>> source, target = sptl.datasets.her2st("F1"), sptl.datasets.her2st("D1")
    >>> model = sptl.models.RelationalTransfer(max_epochs=20).fit(
    ...     source, label_key="label", target=target, exclude=["undetermined"], progress=False
    ... )
    >>> model.predict(target, progress=False).cat.categories.tolist()
    ['connective tissue', 'immune infiltrate', 'invasive cancer']
    """

    _state_arrays = ("components_", "target_sum_", "class_weights_", "feature_scale_")

    def __init__(
        self,
        *,
        encoder: str = "gat",
        hidden: int = 64,
        n_layers: int = 2,
        heads: int = 4,
        dropout: float = 0.3,
        adaptation: str | Sequence[str] | None = "auto",
        adaptation_weight: float = 0.5,
        pseudo_label_share: float = 0.5,
        balance: bool = True,
        unassigned_threshold: float | None = None,
        head: str = "cosine",
        normalize: bool = True,
        n_genes: int = 3000,
        n_comps: int | None = None,
        n_neighs: int = 6,
        max_epochs: int = 150,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        tile_size: int = 50_000,
        sampler: str = "auto",
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        _validate.check_choice(encoder, "encoder", ENCODERS)
        _validate.check_choice(head, "head", ("linear", "cosine"))
        _validate.check_choice(sampler, "sampler", SAMPLERS)
        if sampler == "neighbor" and not _has_sampler():
            msg = (
                "`sampler='neighbor'` needs PyG's sampling backend: `pip install pyg-lib` (or torch-sparse) for"
                " your torch version, or use `sampler='tiles'`."
            )
            raise ImportError(msg)
        if isinstance(adaptation, str) and adaptation == "auto":
            adapt: str | list[str] = "auto"
        else:
            adapt = [] if adaptation is None else [adaptation] if isinstance(adaptation, str) else list(adaptation)
            for a in adapt:
                _validate.check_choice(a, "adaptation", ADAPTATIONS)
        if encoder == "gat" and hidden % heads:
            msg = f"`hidden={hidden}` must be divisible by `heads={heads}` for GAT."
            raise ValueError(msg)
        if not 0 < pseudo_label_share <= 1:
            msg = f"`pseudo_label_share` must lie in (0, 1], got {pseudo_label_share!r}."
            raise ValueError(msg)
        if unassigned_threshold is not None and not 0 < unassigned_threshold < 1:
            msg = f"`unassigned_threshold` must lie in (0, 1), got {unassigned_threshold!r}."
            raise ValueError(msg)
        for name, value in (("max_epochs", max_epochs), ("n_layers", n_layers), ("tile_size", tile_size)):
            if int(value) < 1:
                msg = f"`{name}` must be a positive integer, got {value!r}."
                raise ValueError(msg)
        super().__init__(
            encoder=encoder,
            hidden=int(hidden),
            n_layers=int(n_layers),
            heads=int(heads),
            dropout=float(dropout),
            adaptation=adapt,
            adaptation_weight=float(adaptation_weight),
            pseudo_label_share=float(pseudo_label_share),
            balance=bool(balance),
            unassigned_threshold=unassigned_threshold,
            head=head,
            normalize=bool(normalize),
            n_genes=int(n_genes),
            n_comps=None if n_comps is None else int(n_comps),
            n_neighs=int(n_neighs),
            max_epochs=int(max_epochs),
            lr=float(lr),
            weight_decay=float(weight_decay),
            tile_size=int(tile_size),
            sampler=sampler,
            device=device,
            seed=int(seed),
        )
        self.net_: _Net | None = None

    # -- training -----------------------------------------------------------------------------------
    def fit(
        self,
        source: AnnData | Sequence[AnnData],
        /,
        *,
        label_key: str,
        target: AnnData | Sequence[AnnData] | None = None,
        layer: str | None = None,
        exclude: Sequence[str] = (),
        batch_key: str | None = None,
        spatial_key: str = _keys.SPATIAL,
        graph_key: str | None = None,
        min_shared_genes: int = _validate.MIN_SHARED_GENES,
        weights_key: str | None = None,
        progress: bool = True,
    ) -> RelationalTransfer:
        """Train on labelled source sections, adapting to target sections when given.

        Parameters
        ----------
        source
            Labelled section(s): an AnnData, a list of them, or one AnnData holding several sections
            told apart by ``obs[batch_key]``. Raw counts.
        label_key
            Column of ``source.obs`` with the labels; missing values are ignored.
        target
            Unlabelled section(s) used for gene selection, the PCA and domain adaptation.
        layer
            Layer with raw counts; ``None`` uses ``.X``.
        exclude
            Labels not to learn (for example ``["undetermined"]``).
        batch_key
            Column of ``source.obs`` that splits one AnnData into sections (each gets its own graph and
            standardisation).
        spatial_key
            Key of the coordinates in ``.obsm``.
        graph_key
            Use the graph in ``obsp[f"{graph_key}_connectivities"]`` of every section (as written by
            :func:`sptl.pp.spatial_graph`); ``None`` builds it on the fly.
        min_shared_genes
            Fewest genes all sections must share.
        weights_key
            Column of every source's ``.obs`` with instance weights (for example from
            :func:`sptl.tl.instance_weights`) that multiply each source spot's classification loss (and
            its class's size for ``balance``). ``None`` weighs all spots equally.
        progress
            Show a progress bar over epochs.

        Returns
        -------
        The fitted model.
        """
        sources, targets, labels, names, counts = self._sections(
            source, target, label_key=label_key, layer=layer, exclude=exclude, batch_key=batch_key
        )
        sections = sources + targets
        lab = pd.concat(labels)
        labelled = lab.notna().to_numpy()
        n_src = len(labelled)
        sw = np.ones(n_src + sum(a.n_obs for a in targets), dtype=np.float32)  # targets weigh 1 (unlabelled)
        sw[:n_src] = source_weights(sources, weights_key, labelled)
        # a source without coordinates (a dissociated reference: scRNA-seq atlas) is a graph without edges
        dissociated = [i < len(sources) and spatial_key not in a.obsm for i, a in enumerate(sections)]
        coords = [
            None if d else _validate.check_spatial(a, spatial_key, n)
            for a, n, d in zip(sections, names, dissociated, strict=True)
        ]
        graphs = [
            sparse.csr_matrix((a.n_obs, a.n_obs)) if d else self._graph(a, spatial_key, graph_key, n)
            for a, n, d in zip(sections, names, dissociated, strict=True)
        ]
        genes = _validate.shared_genes(sections, names, min_shared_genes)
        p = self.params

        hvg, components, pcs, target_sum = fit_pca_space(
            sections,
            counts,
            genes=genes,
            n_sources=len(sources),
            n_genes=p["n_genes"],
            n_comps=p["n_comps"] or (PANEL_GENES if len(genes) <= PANEL_GENES else TRANSCRIPTOME_COMPS),
            seed=p["seed"],
        )
        scale = np.vstack(pcs).std(axis=0).clip(1e-6).astype(np.float32)
        classes = sorted(lab.dropna().unique())
        codes = np.full(len(sw), -1, dtype=np.int64)  # -1 = unlabelled
        codes[:n_src] = pd.Categorical(lab, categories=classes).codes
        freq = class_sizes(codes[codes >= 0], sw[codes >= 0], len(classes))
        weights = (freq.sum() / (len(classes) * freq)) if p["balance"] else np.ones_like(freq)

        self.var_names_ = hvg
        self.classes_ = classes
        self.components_ = components
        self.target_sum_ = np.float32(target_sum)
        self.feature_scale_ = scale
        self.class_weights_ = weights.astype(np.float32)
        history = self._train(
            [self._scale(x) for x in pcs],
            graphs,
            coords,
            codes,
            sw,
            n_src=n_src,
            n_sources=len(sources),
            progress=progress,
        )
        self.history_ = {"n_source_spots": int((codes >= 0).sum()), "n_shared_genes": len(genes), **history}
        return self

    def _scale(self, pcs: np.ndarray) -> np.ndarray:
        """Node features from principal components: unit variance, or unit length with ``normalize``."""
        if self.params["normalize"]:
            return (pcs / np.maximum(np.linalg.norm(pcs, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        return (pcs / self.feature_scale_).astype(np.float32)

    def _graph(self, adata: AnnData, spatial_key: str, graph_key: str | None, name: str) -> sparse.csr_matrix:
        coords = _validate.check_spatial(adata, spatial_key, name)
        if graph_key is not None:
            return check_graph(adata, graph_key, coords, name)
        if adata.n_obs < 2:
            return sparse.csr_matrix((adata.n_obs, adata.n_obs))
        conn, _ = build_graph(coords, n_neighs=min(self.params["n_neighs"], adata.n_obs - 1))
        return conn

    def _train(
        self,
        feats: list[np.ndarray],
        graphs: list[sparse.csr_matrix],
        coords: list[np.ndarray | None],
        codes: np.ndarray,
        spot_weights: np.ndarray,
        *,
        n_src: int,
        n_sources: int,
        progress: bool,
    ) -> dict[str, list[float]]:
        p = self.params
        device = resolve_device(p["device"])
        torch.manual_seed(p["seed"])
        rng = np.random.default_rng(p["seed"])
        x, edge_index, offsets = _union(feats, graphs)
        domain = np.zeros(len(x), dtype=np.float32)
        domain[n_src:] = 1.0
        batches = self._batches(coords, offsets, edge_index, len(x), n_sources, rng)
        net = _Net(
            x.shape[1],
            len(self.classes_),
            encoder=p["encoder"],
            hidden=p["hidden"],
            n_layers=p["n_layers"],
            heads=p["heads"],
            dropout=p["dropout"],
            cosine=p["head"] == "cosine",
        ).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        xt = torch.as_tensor(x)
        yt = torch.as_tensor(codes)
        dt = torch.as_tensor(domain)
        wt = torch.as_tensor(spot_weights)
        cw = torch.as_tensor(self.class_weights_, device=device)
        auto = p["adaptation"] == "auto"
        adapt = set(AUTO_ADAPTATION if auto else p["adaptation"]) if n_src < len(x) else set()
        history: dict[str, Any] = {"loss": [], "classification": [], "adaptation": []}
        if "self_training" in adapt:
            pseudo, smoothing = self._teacher(x, codes, spot_weights, graphs, n_src, n_sources, device, rng)
            history["teacher_smoothing"] = smoothing
            if auto and not smoothing["coherence"] >= REGION_COHERENCE:
                adapt.discard("self_training")
            else:
                history["n_pseudo_labels"] = int((pseudo >= 0).sum())
                pt = torch.as_tensor(pseudo)
        history["adaptation_used"] = sorted(adapt)
        epochs = progress_bar(range(p["max_epochs"]), enabled=progress, desc="gnn transfer: train")
        for epoch in epochs:
            net.train()
            totals = np.zeros(3)
            n_batches = 0
            for nodes, sub_ei, core_mask in batches():
                n_batches += 1
                xb, eb = xt[nodes].to(device), sub_ei.to(device)
                yb, db, wb = yt[nodes].to(device), dt[nodes].to(device), wt[nodes].to(device)
                cm = torch.as_tensor(core_mask, device=device)
                logits, h = net(xb, eb)
                lab = cm & (yb >= 0)
                # class-weighted, instance-weighted mean (F.cross_entropy's weighted mean, per spot)
                ce = F.cross_entropy(logits[lab], yb[lab], weight=cw, reduction="none")
                cls_loss = (ce * wb[lab]).sum() / (cw[yb[lab]] * wb[lab]).sum().clamp_min(1e-12)
                ad_loss = torch.zeros((), device=device)
                src_m, tgt_m = cm & (db == 0), cm & (db == 1)
                if adapt and tgt_m.any():
                    progress_frac = epoch / max(p["max_epochs"] - 1, 1)
                    if "mmd" in adapt:
                        ad_loss = ad_loss + mmd(h[src_m], h[tgt_m], rng)
                    if "dann" in adapt:
                        coeff = 2.0 / (1.0 + np.exp(-10 * progress_frac)) - 1.0
                        dom = net.domain(grad_reverse(h[cm], coeff)).squeeze(-1)
                        ad_loss = ad_loss + F.binary_cross_entropy_with_logits(dom, db[cm])
                    if "self_training" in adapt:
                        pb = pt[nodes].to(device)
                        sel = tgt_m & (pb >= 0)
                        if sel.any():
                            ad_loss = ad_loss + F.cross_entropy(logits[sel], pb[sel], weight=cw)
                loss = cls_loss + p["adaptation_weight"] * ad_loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                totals += [float(loss.detach()), float(cls_loss.detach()), float(ad_loss.detach())]
            n = max(n_batches, 1)
            for key, value in zip(("loss", "classification", "adaptation"), totals / n, strict=True):
                history[key].append(round(float(value), 5))
        self.net_ = net.cpu().eval()
        return history

    def _teacher(
        self,
        x: np.ndarray,
        codes: np.ndarray,
        spot_weights: np.ndarray,
        graphs: list[sparse.csr_matrix],
        n_src: int,
        n_sources: int,
        device: torch.device,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Pseudo-labels of the target nodes (-1: none; source nodes -1 too) from a spread knn vote.

        Every target node gets the cosine knn vote of the labelled source nodes, spread over the
        target graphs with the weight the label coherence of the source sets (as ``smooth="auto"`` of
        :func:`sptl.tl.transfer_labels`); per class, the most confident ``pseudo_label_share`` of its
        nodes keep the label. Also returns the spreading weight and the coherence it came from.
        """
        labelled = np.flatnonzero(codes[:n_src] >= 0)
        if len(labelled) > TEACHER_MAX_SOURCE:
            labelled = np.sort(rng.choice(labelled, TEACHER_MAX_SOURCE, replace=False))
        proba, _ = knn_vote(
            _l2(x[n_src:]),
            _l2(x[labelled]),
            codes[labelled],
            class_weights=self.class_weights_,
            spot_weights=spot_weights[labelled],
            k=TEACHER_NEIGHBORS,
            device=device,
        )
        target_graph = sparse.block_diag(graphs[n_sources:], format="csr")
        smoothing = choose_smooth(
            codes[:n_src], sparse.block_diag(graphs[:n_sources], format="csr"), proba, target_graph
        )
        if smoothing["alpha"] > 0:
            proba = spread_labels(proba, target_graph, smoothing["alpha"])
        pred, conf = proba.argmax(axis=1), proba.max(axis=1)
        keep = np.zeros(len(pred), dtype=bool)
        for k in np.unique(pred):
            mine = pred == k
            keep |= mine & (conf >= np.quantile(conf[mine], 1 - self.params["pseudo_label_share"]))
        out = np.full(len(codes), -1, dtype=np.int64)
        out[n_src:][keep] = pred[keep]
        return out, smoothing

    def _batches(
        self,
        coords: list[np.ndarray | None],
        offsets: np.ndarray,
        edge_index: torch.Tensor,
        n_nodes: int,
        n_sources: int,
        rng: np.random.Generator,
    ) -> Callable[[], Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray]]]:
        """A callable yielding one epoch of mini-batches ``(nodes, edge_index, core_mask)``.

        Each batch holds source seed nodes and, when there are targets, target seed nodes, each with
        its ``n_layers``-hop neighbourhood; losses are taken on the seeds (``core_mask``) only.
        """
        p = self.params
        hops = p["n_layers"]
        n_src = int(offsets[n_sources])
        if p["sampler"] == "neighbor" or (p["sampler"] == "auto" and _has_sampler()):
            from torch_geometric.data import Data
            from torch_geometric.loader import NeighborLoader

            data = Data(edge_index=edge_index, num_nodes=n_nodes)
            gen = torch.Generator().manual_seed(p["seed"])

            def loader(seeds: np.ndarray) -> Any:
                return NeighborLoader(
                    data,
                    num_neighbors=[-1] * hops,
                    input_nodes=torch.as_tensor(seeds),
                    batch_size=p["tile_size"],
                    shuffle=True,
                    generator=gen,
                )

            src_loader = loader(np.arange(n_src))
            tgt_loader = loader(np.arange(n_src, n_nodes)) if n_src < n_nodes else None

            def part(batch: Any) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
                nodes = batch.n_id.numpy()
                mask = np.zeros(len(nodes), dtype=bool)
                mask[: batch.batch_size] = True
                return nodes, batch.edge_index, mask

            def neighbor_epoch() -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray]]:
                tgt_iter = iter(tgt_loader) if tgt_loader is not None else None
                for batch in src_loader:
                    parts = [part(batch)]
                    if tgt_iter is not None:
                        try:
                            tgt_batch = next(tgt_iter)
                        except StopIteration:
                            tgt_iter = iter(tgt_loader)
                            tgt_batch = next(tgt_iter)
                        parts.append(part(tgt_batch))
                    yield _merge(parts)

            return neighbor_epoch

        tiles_per_section = [
            [t + off for t in _tiles(c, p["tile_size"], int(end - off))]
            for c, off, end in zip(coords, offsets[:-1], offsets[1:], strict=True)
        ]
        # every tile's subgraph (core + halo) is cut once and reused in every epoch
        src_tiles = [_with_halo(t, edge_index, hops, n_nodes) for tiles in tiles_per_section[:n_sources] for t in tiles]
        tgt_tiles = [_with_halo(t, edge_index, hops, n_nodes) for tiles in tiles_per_section[n_sources:] for t in tiles]

        def tile_epoch() -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray]]:
            for i in rng.permutation(len(src_tiles)):
                parts = [src_tiles[i]]
                if tgt_tiles:
                    parts.append(tgt_tiles[rng.integers(len(tgt_tiles))])
                yield _merge(parts)

        return tile_epoch

    # -- inference ----------------------------------------------------------------------------------
    def _forward(
        self,
        adata: AnnData,
        *,
        layer: str | None,
        spatial_key: str,
        graph_key: str | None,
        max_missing_genes: float,
        progress: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities and embeddings of every observation of one section."""
        _validate.check_adata(adata, "adata")
        X = self._model_counts(adata, layer, max_missing_genes)
        graph = self._graph(adata, spatial_key, graph_key, "adata")
        x = self._scale(standardized(X, float(self.target_sum_)) @ self.components_.T)
        x, edge_index, _ = _union([x.astype(np.float32)], [graph])
        device = resolve_device(self.params["device"])
        net = self.net_.to(device).eval()
        probs = np.empty((len(x), len(self.classes_)), dtype=np.float32)
        emb = np.empty((len(x), self.params["hidden"]), dtype=np.float32)
        tiles = _tiles(_validate.check_spatial(adata, spatial_key, "adata"), self.params["tile_size"])
        xt = torch.as_tensor(x)
        with torch.no_grad():
            for core in progress_bar(tiles, enabled=progress and len(tiles) > 1, desc="gnn transfer: predict"):
                nodes, sub_ei, core_mask = _with_halo(core, edge_index, self.params["n_layers"], len(x))
                logits, h = net(xt[nodes].to(device), sub_ei.to(device))
                keep = torch.as_tensor(core_mask, device=device)
                probs[nodes[core_mask]] = logits[keep].softmax(-1).cpu().numpy()
                emb[nodes[core_mask]] = h[keep].cpu().numpy()
        self.net_.cpu()
        return probs, emb

    def predict_proba(
        self,
        adata: AnnData,
        /,
        *,
        layer: str | None = None,
        spatial_key: str = _keys.SPATIAL,
        graph_key: str | None = None,
        max_missing_genes: float = 0.1,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Class probabilities of every observation of one section (rows ``obs_names``, columns classes)."""
        self._check_fitted()
        probs, _ = self._forward(
            adata,
            layer=layer,
            spatial_key=spatial_key,
            graph_key=graph_key,
            max_missing_genes=max_missing_genes,
            progress=progress,
        )
        return pd.DataFrame(probs, index=adata.obs_names.copy(), columns=pd.Index(self.classes_))

    def transform(
        self,
        adata: AnnData,
        /,
        *,
        layer: str | None = None,
        spatial_key: str = _keys.SPATIAL,
        graph_key: str | None = None,
        max_missing_genes: float = 0.1,
    ) -> np.ndarray:
        """The learned node embedding of every observation of one section."""
        self._check_fitted()
        _, emb = self._forward(
            adata,
            layer=layer,
            spatial_key=spatial_key,
            graph_key=graph_key,
            max_missing_genes=max_missing_genes,
            progress=False,
        )
        return emb

    def predict(
        self,
        adata: AnnData,
        /,
        *,
        layer: str | None = None,
        spatial_key: str = _keys.SPATIAL,
        graph_key: str | None = None,
        max_missing_genes: float = 0.1,
        progress: bool = True,
    ) -> pd.Series:
        """Most probable class of every observation (``"unassigned"`` below ``unassigned_threshold``)."""
        proba = self.predict_proba(
            adata,
            layer=layer,
            spatial_key=spatial_key,
            graph_key=graph_key,
            max_missing_genes=max_missing_genes,
            progress=progress,
        )
        return labels_from_proba(proba, self.params["unassigned_threshold"])

    # -- persistence --------------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = super()._arrays()
        for k, v in self.net_.state_dict().items():
            arrays[f"net.{k}"] = v.detach().cpu().numpy()
        arrays["net_in_dim"] = np.asarray(self.components_.shape[0])
        return arrays

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        super()._restore(arrays)
        p = self.params
        net = _Net(
            int(arrays["net_in_dim"]),
            len(self.classes_),
            encoder=p["encoder"],
            hidden=p["hidden"],
            n_layers=p["n_layers"],
            heads=p["heads"],
            dropout=p["dropout"],
            cosine=p["head"] == "cosine",
        )
        state = {k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            msg = f"The checkpoint's network weights do not fit a {type(self).__name__} with these parameters: {e}"
            raise ValueError(msg) from e
        self.net_ = net.eval()


def _has_sampler() -> bool:
    """Whether PyG can sample neighbourhoods here (pyg-lib or torch-sparse imports)."""
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


def _union(feats: list[np.ndarray], graphs: list[sparse.csr_matrix]) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Stack sections into one block-diagonal graph: features, symmetric edge_index, row offsets."""
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in feats])])
    adj = sparse.block_diag(graphs, format="coo") if graphs else sparse.coo_matrix((0, 0))
    adj = (adj + adj.T).tocoo()
    edge_index = torch.as_tensor(np.vstack([adj.row, adj.col]).astype(np.int64))
    return np.vstack(feats).astype(np.float32), edge_index, offsets


def _tiles(coords: np.ndarray | None, tile_size: int, n: int | None = None) -> list[np.ndarray]:
    """Cut one section into spatial tiles of at most ``tile_size`` nodes (strips in x, then in y).

    A section without coordinates (``coords=None``, ``n`` nodes and no edges) is cut into consecutive blocks.
    """
    n = len(coords) if coords is not None else n
    if n <= tile_size:
        return [np.arange(n)]
    if coords is None:
        return np.array_split(np.arange(n), int(np.ceil(n / tile_size)))
    n_strips = int(np.ceil(np.sqrt(n / tile_size)))
    tiles = []
    for strip in np.array_split(np.argsort(coords[:, 0], kind="stable"), n_strips):
        by_y = strip[np.argsort(coords[strip, 1], kind="stable")]
        tiles.extend(np.array_split(by_y, int(np.ceil(len(strip) / tile_size))))
    return [np.sort(t) for t in tiles]


def _with_halo(
    core: np.ndarray, edge_index: torch.Tensor, hops: int, n_nodes: int
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Nodes of ``core`` plus their ``hops``-hop neighbourhood, the induced edges and a core mask."""
    from torch_geometric.utils import k_hop_subgraph

    core_t = torch.as_tensor(core, dtype=torch.long)
    if len(core) == n_nodes:
        return core, edge_index, np.ones(n_nodes, dtype=bool)
    nodes, sub_ei, _, _ = k_hop_subgraph(core_t, hops, edge_index, relabel_nodes=True, num_nodes=n_nodes)
    nodes_np = nodes.numpy()
    mask = np.isin(nodes_np, core)
    return nodes_np, sub_ei, mask


def _merge(
    parts: list[tuple[np.ndarray, torch.Tensor, np.ndarray]],
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Put tile subgraphs side by side in one batch (edge indices shifted, halos kept apart)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(n) for n, _, _ in parts[:-1]])
    nodes = np.concatenate([n for n, _, _ in parts])
    edges = torch.cat([e + int(o) for (_, e, _), o in zip(parts, offsets, strict=True)], dim=1)
    mask = np.concatenate([m for _, _, m in parts])
    return nodes, edges, mask
