"""The convolutional trunk: ImageNet MobileNetV2 ``features`` cut at a chosen layer, and the images it expects."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
from PIL import Image
from torch import nn

from vpr.cnn.weights import ensure_weights

# Output channels of torchvision's mobilenet_v2().features[i]; features[:cut] ends with CHANNELS[cut - 1].
CHANNELS = (32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class TrunkConfig:
    """``features[:cut]`` of MobileNetV2: 14 ends at the 96-channel blocks (stride 16), 18 at the 320-channel block
    (stride 32), 19 adds the 1280-channel 1x1 conv. Images are resized to ``width`` x ``height``: Nordland frames
    are 64x32 and GardensPoint 960x540, so the default upsamples the first (ImageNet-sized receptive fields need
    it) and keeps the second cheap on a CPU. ``pretrained`` starts from ImageNet weights.

    Defaults chosen on held-out Nordland calibration places (trained on calibration places 0-399, R@1 on 400-599,
    off-the-shelf NetVLAD): cut 14 0.375 vs cut 18 0.115 (160x80); 160x80 0.375 vs 224x112 0.335 vs 128x64 0.345
    (cut 14). Stride 16 keeps 10x5 local descriptors per image where stride 32 leaves 5x3."""

    cut: int = 14
    width: int = 160
    height: int = 80
    pretrained: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.cut <= len(CHANNELS):
            raise ValueError(f"trunk cut must be in 1..{len(CHANNELS)}, got {self.cut}")
        if self.width < 32 or self.height < 32:
            raise ValueError(f"images must be at least 32x32 for MobileNetV2, got {self.width}x{self.height}")

    @property
    def channels(self) -> int:
        return CHANNELS[self.cut - 1]


def build_trunk(config: TrunkConfig, load_weights: bool = True) -> nn.Sequential:
    """MobileNetV2 features through layer ``cut - 1``, with ImageNet weights (through torchvision's weights API)
    when the config is pretrained and ``load_weights`` (False when a saved state dict will replace them anyway)."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2  # lazily: importing torchvision takes seconds

    imagenet = config.pretrained and load_weights
    if imagenet:
        ensure_weights()
    return mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1 if imagenet else None).features[: config.cut]


def _rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    image = np.ascontiguousarray(image[..., :3])
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[:2] != (height, width):
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    return image


def prepare_images(images: Iterable[np.ndarray], config: TrunkConfig) -> torch.Tensor:
    """(N, 3, height, width) float32: RGB (grey replicated), resized, ImageNet-normalised."""
    stack = np.stack([_rgb(image, config.width, config.height) for image in images]).astype(np.float32)
    normalised = (stack / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))


def batches(images: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive lists of ``size`` images, so full-resolution frames are never all held in memory."""
    iterator = iter(images)
    while batch := list(islice(iterator, size)):
        yield batch
