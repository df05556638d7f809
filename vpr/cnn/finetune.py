"""Building a descriptor network from an aligned training split: off-the-shelf (k-means only) or fine-tuned.

Fine-tuning follows NetVLAD's weakly supervised recipe on two traverses whose frame i shows the same place (the
Nordland calibration split: summer and winter). Each image of one traverse is an anchor, the other traverse's image
of the same place its positive, and its negatives are the other traverse's places more than ``negative_gap`` frames
away that are nearest in the current descriptor space (re-mined every epoch). Loss: the triplet margin loss,
averaged over the hardest ``negatives``. Only the last ``trainable_blocks`` trunk layers and the head learn; the
frozen part's feature maps are computed once and cached, which is what makes this a few minutes on two CPU cores.
Batch norm keeps its ImageNet statistics (the network stays in eval mode), as small triplet batches would
corrupt them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spikebot.progress import progress
from vpr.cnn.model import PlaceNet, PlaceNetConfig, Variant


@dataclass(frozen=True)
class TrainingConfig:
    """``epochs = 0`` gives the off-the-shelf model (ImageNet trunk, k-means centres, PCA if configured).

    Defaults chosen on held-out Nordland calibration places (NetVLAD trained on calibration places 0-399 summer and
    winter, R@1 winter -> summer on places 400-599; off-the-shelf 0.375): 5 epochs, 3 trainable blocks, Adam at
    3e-4 gave 0.62; 1 block at 1e-4 0.50, 3 blocks at 1e-4 0.58, at 1e-3 0.565, 10 epochs 0.60, 4 blocks 0.62,
    10 negatives 0.595, negative gap 2 (at 1e-4) 0.595. 200 validation places: differences under ~0.05 are noise."""

    model: PlaceNetConfig = field(default_factory=PlaceNetConfig)
    epochs: int = 5
    trainable_blocks: int = 3
    learning_rate: float = 3e-4
    margin: float = 0.1
    negative_gap: int = 10
    negatives: int = 5
    batch_size: int = 16
    inference_batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.negatives < 1 or self.batch_size < 1 or self.negative_gap < 0:
            raise ValueError("epochs and negative_gap must be >= 0, negatives and batch_size >= 1")
        if not 1 <= self.trainable_blocks <= self.model.trunk.cut:
            raise ValueError(f"trainable_blocks must be in 1..{self.model.trunk.cut} (the trunk's layers)")

    @property
    def variant(self) -> Variant:
        return "fine-tuned" if self.epochs else "off-the-shelf"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        return cls(**{**data, "model": PlaceNetConfig.from_dict(data["model"])})


@dataclass(frozen=True)
class Tuples:
    """Training tuples as rows into the stacked (reference, query) images: anchor, positive, negatives (n, M)."""

    anchors: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray


def mine_tuples(descriptors: torch.Tensor, n_places: int, negative_gap: int, negatives: int) -> Tuples:
    """Both directions: queries anchored on references and references on queries, hardest negatives first.

    ``descriptors`` stacks the reference images (rows 0..n-1) on the query images (rows n..2n-1).
    """
    if n_places - (2 * negative_gap + 1) < negatives:
        raise ValueError(f"{n_places} places leave fewer than {negatives} negatives more than {negative_gap} frames away")
    reference, query = descriptors[:n_places], descriptors[n_places:]
    places = torch.arange(n_places)
    near = (places[:, None] - places[None, :]).abs() <= negative_gap
    similarity = (query @ reference.T).masked_fill(near, -torch.inf)  # query place i x reference place j
    hard_references = similarity.topk(negatives, dim=1).indices.numpy()  # for query anchors
    hard_queries = similarity.T.topk(negatives, dim=1).indices.numpy() + n_places  # for reference anchors
    index = np.arange(n_places)
    return Tuples(np.concatenate([index + n_places, index]), np.concatenate([index, index + n_places]),
                  np.concatenate([hard_references, hard_queries]))


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over tuples and negatives of max(0, |a - p| - |a - n| + margin); negatives are (B, M, D)."""
    positive_distance = (anchor - positive).norm(dim=1, keepdim=True)
    negative_distance = (anchor[:, None] - negatives).norm(dim=2)
    return F.relu(positive_distance - negative_distance + margin).mean()


def tuple_loss(model: PlaceNet, frozen: torch.Tensor, start: int, tuples: Tuples, rows: np.ndarray, margin: float) -> torch.Tensor:
    """The triplet loss of tuples ``rows``, each image passed once through ``trunk[start:]`` and the head."""
    anchors, positives, negatives = tuples.anchors[rows], tuples.positives[rows], tuples.negatives[rows]
    images, inverse = np.unique(np.concatenate([anchors, positives, negatives.ravel()]), return_inverse=True)
    descriptors = model.head(model.trunk[start:](frozen[torch.from_numpy(images)].to(model.device)))[torch.from_numpy(inverse)]
    n = len(rows)
    return triplet_loss(descriptors[:n], descriptors[n : 2 * n], descriptors[2 * n :].reshape(n, negatives.shape[1], -1), margin)


def train_epoch(model: PlaceNet, frozen: torch.Tensor, start: int, tuples: Tuples, optimiser: torch.optim.Optimizer,
                config: TrainingConfig, rng: np.random.Generator) -> float:
    """One pass over the tuples in shuffled batches; returns the mean batch loss."""
    order = rng.permutation(len(tuples.anchors))
    steps = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    losses = []
    for rows in progress(steps, desc="triplet steps", total=len(steps)):
        loss = tuple_loss(model, frozen, start, tuples, rows, config.margin)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def train_place_net(reference: Sequence[np.ndarray], query: Sequence[np.ndarray], config: TrainingConfig, *,
                    device: str = "cpu", split: dict[str, Any] | None = None) -> tuple[PlaceNet, dict[str, Any]]:
    """The network and its training record (config, split, seed, epochs, losses per epoch, timings).

    ``reference[i]`` and ``query[i]`` must show the same place. k-means (and PCA) use both traverses' images.
    """
    if len(reference) != len(query):
        raise ValueError(f"training traverses must be aligned, got {len(reference)} and {len(query)} images")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = PlaceNet(config.model).to(device)
    batch = config.inference_batch
    start = len(model.trunk) - config.trainable_blocks if config.epochs else len(model.trunk)
    frozen = torch.cat([model.feature_maps(traverse, batch, upto=start, total=len(traverse)) for traverse in (reference, query)])
    model.initialise(model.continue_maps(frozen, start, batch), config.seed)
    encoded = time.perf_counter()

    trainable = [*model.trunk[start:].parameters(), *model.head.parameters()]
    for parameter in model.trunk[:start].parameters():
        parameter.requires_grad_(False)
    optimiser = torch.optim.Adam([p for p in trainable if p.requires_grad], lr=config.learning_rate)
    losses = []
    for _ in progress(range(config.epochs), desc="fine-tuning epochs", total=config.epochs):
        descriptors = model.pool_maps(model.continue_maps(frozen, start, batch), batch, whiten=False)
        tuples = mine_tuples(descriptors, len(reference), config.negative_gap, config.negatives)
        losses.append(train_epoch(model, frozen, start, tuples, optimiser, config, rng))
    trained = time.perf_counter()

    model.fit_whitening(model.continue_maps(frozen, start, batch), batch)
    model.eval()
    record = {
        "variant": config.variant,
        "config": config.to_dict(),
        "split": split or {},
        "n_places": len(reference),
        "seed": config.seed,
        "epochs": config.epochs,
        "losses": losses,
        "device": device,
        "seconds": {"feature_maps_and_kmeans": encoded - started, "fine_tuning": trained - encoded,
                    "total": time.perf_counter() - started},
    }
    return model, record
