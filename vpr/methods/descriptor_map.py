"""A built map of a descriptor method (NetVLAD, GeM, DenseVLAD) as one folder, so a service loads it without
describing the reference images again: the describer (model or vocabulary), the faiss index of the reference
descriptors and a fingerprint of the reference images it was built from.

The manifest ``map.json`` is written last, so a folder with a manifest is complete; loading refuses another
format, another method, or other reference images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spikebot.provenance import __version__
from vpr.errors import SpikebotError
from vpr.index import ReferenceIndex
from vpr.preprocess import resize, to_grayscale

DESCRIPTOR_MAP_FORMAT = "spikebot-descriptor-map/1"


class DescriptorMapError(SpikebotError):
    """A descriptor map folder is missing, of another format or method, or built on other reference images."""


class FingerprintedImages:
    """Passes images through while hashing a 16x16 grey thumbnail of each, so the fingerprint of a traverse costs
    no second pass over it."""

    def __init__(self, images: Iterable[np.ndarray]):
        self._images = images
        self._hash = hashlib.sha256()
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for image in self._images:
            thumbnail = np.round(resize(to_grayscale(image), 16, 16)).astype(np.uint8)
            self._hash.update(thumbnail.tobytes())
            self.count += 1
            yield image

    @property
    def fingerprint(self) -> str:
        return self._hash.hexdigest()[:16]


def fingerprint_images(images: Iterable[np.ndarray]) -> tuple[str, int]:
    """(fingerprint, number of images) of a traverse."""
    stream = FingerprintedImages(images)
    for _ in stream:
        pass
    return stream.fingerprint, stream.count


def save_descriptor_map(folder: str | Path, method: str, index: ReferenceIndex, fingerprint: str,
                        describer: dict[str, Any]) -> Path:
    """Write the manifest next to ``describer/`` and ``index/``, which the caller has written or this writes."""
    folder = Path(folder)
    index.save(folder / "index")
    manifest = {"format": DESCRIPTOR_MAP_FORMAT, "method": method, "n_places": index.n_places,
                "reference_fingerprint": fingerprint, "describer": describer, "spikebot_version": __version__}
    (folder / "map.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load_descriptor_map(folder: str | Path, method: str, reference_images: Iterable[np.ndarray]) -> tuple[ReferenceIndex, Path]:
    """The index of a saved map and the folder of its describer, after checking that the map is this method's
    and was built on exactly these reference images."""
    folder = Path(folder)
    manifest_path = folder / "map.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as error:
        raise DescriptorMapError(f"not a spikebot map (no map.json): {folder}") from error
    except (OSError, json.JSONDecodeError) as error:
        raise DescriptorMapError(f"unreadable map manifest {manifest_path}: {error}") from error
    if manifest.get("format") != DESCRIPTOR_MAP_FORMAT:
        raise DescriptorMapError(f"{manifest_path} has format {manifest.get('format')!r}; this spikebot reads {DESCRIPTOR_MAP_FORMAT}")
    if manifest.get("method") != method:
        raise DescriptorMapError(f"map {folder} was built by method {manifest.get('method')!r}, not {method!r}")
    fingerprint, count = fingerprint_images(reference_images)
    if fingerprint != manifest["reference_fingerprint"] or count != manifest["n_places"]:
        raise DescriptorMapError(f"map {folder} was built on other reference images "
                                 f"({manifest['n_places']} places, fingerprint {manifest['reference_fingerprint']}; "
                                 f"these are {count}, {fingerprint})")
    return ReferenceIndex.load(folder / "index"), folder / "describer"
