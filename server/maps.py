"""Maps the service localises against: how a map is described, stored, and loaded into a ready PlaceMethod.

A map store is a folder with one sub-folder per map::

    <store>/<name>/service.json   method, method config file, reference traverse, n_places, created
    <store>/<name>/map/           the method's saved map (``save_map``), for methods that save maps

The reference traverse is recorded (registered dataset name/reference/split, or an image folder) and re-read at
load time: saved maps verify a fingerprint of the reference images, and methods that save nothing (SAD) rebuild
their map from them. Relative paths in ``service.json`` (a ``folder`` source, ``config_file``) are inside the map
folder: maps built over HTTP keep their uploaded reference images in ``<store>/<name>/reference/`` and their
config in ``<store>/<name>/config.json``. Maps are written to a temporary folder (``<store>/.<name>.*``) and
renamed, so a folder with ``service.json`` is complete; a deleted map is renamed away before it is removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vpr.data import Traverse
from vpr.errors import SpikebotError
from vpr.methods import METHODS, PlaceMethod, create_method

SERVICE_FILE = "service.json"
MAP_FOLDER = "map"
FORMAT = 1
SPIKING_METHODS = ("snn-ensemble", "snn-modular")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class MapStoreError(SpikebotError):
    """A map folder is missing, incomplete or inconsistent."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise MapStoreError(f"invalid map name {name!r}: use letters, digits, '_', '-', '.' (at most 64)")
    return name


@dataclass(frozen=True)
class ReferenceSource:
    """Where a map's reference traverse comes from: a registered dataset (``demo`` needs no data) or a folder."""

    dataset: str | None = "demo"
    reference: str | None = None
    split: str = "all"
    data_root: str | None = None
    folder: str | None = None
    pattern: str = "*"

    def load(self) -> Traverse:
        from vpr.datasets import folder_traverse, load_registered

        if self.folder is not None:
            return folder_traverse(self.folder, self.pattern)
        if self.dataset is None:
            raise MapStoreError("a reference source needs a registered dataset or a folder")
        return load_registered(self.dataset, self.reference, data_root=self.data_root, split=self.split).reference


@dataclass(frozen=True)
class MapSpec:
    """Everything needed to load one map; ``map_dir`` is the saved map (None: build from the reference)."""

    name: str
    method: str = "sad"
    source: ReferenceSource = field(default_factory=ReferenceSource)
    map_dir: str | None = None
    config_file: str | None = None

    def load(self) -> LoadedMap:
        return load_map(self)


def make_method(name: str, config_file: str | None = None, map_dir: str | None = None) -> PlaceMethod:
    """The method ``name`` with its config (spiking methods: a JSON file) and, if given, its saved map."""
    if name not in METHODS:
        raise MapStoreError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    method_type = METHODS[name]
    if map_dir is not None and not method_type.saves_maps:
        raise MapStoreError(f"method {name} builds its map on the fly; it has no saved map to load")
    if config_file is not None and name not in SPIKING_METHODS:
        raise MapStoreError(f"a config file applies to {' and '.join(SPIKING_METHODS)}, not {name}")
    config_type = method_type.config_type
    config = config_type.from_file(config_file) if config_file else config_type()
    return create_method(name, dataclasses.replace(config, map_dir=map_dir) if map_dir is not None else config)


class LoadedMap:
    """A built PlaceMethod ready for queries. Calls into the method are serialised per map (methods are not promised
    to be thread-safe); the service calls :meth:`distance_rows` from the map's one batcher thread
    (:mod:`server.batching`), so the lock only matters for direct callers (tests, tools)."""

    def __init__(self, name: str, method: PlaceMethod, n_places: int, spec: MapSpec | None = None):
        self.name, self.method, self.n_places, self.spec = name, method, n_places, spec
        self._lock = threading.Lock()

    def distance_row(self, image: np.ndarray) -> np.ndarray:
        """(n_places,) float32 distances of one image."""
        with self._lock:
            rows = np.asarray(self.method.distances([image]), dtype=np.float32)
        self._check(rows, 1)
        return rows[0]

    def distance_rows(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(len(images), n_places) float32 distances: one call of the method's batched ``distances``. One image goes
        through :meth:`distance_row` (so a test double that replaces it sees every single frame)."""
        if len(images) == 1:
            return self.distance_row(images[0])[None]
        with self._lock:
            rows = np.asarray(self.method.distances(list(images)), dtype=np.float32)
        self._check(rows, len(images))
        return rows

    def warm_up(self, max_batch: int) -> None:
        """Describe a blank frame in batches of every size up to ``max_batch``: the first call of each batch size
        builds the kernels for that shape (oneDNN's, for the bfloat16 readout), and a robot should not wait for it.
        The service also runs a frame through the map's batcher (:meth:`server.app.ServiceState.warm_up`)."""
        blank = np.zeros((32, 64), dtype=np.uint8)
        for size in range(1, max_batch + 1):
            self.distance_rows([blank] * size)

    def _check(self, rows: np.ndarray, n: int) -> None:
        if rows.shape != (n, self.n_places):
            raise RuntimeError(f"{self.method.name} gave distances of shape {rows.shape}, expected ({n}, {self.n_places})")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method.name, "n_places": self.n_places}


def load_map(spec: MapSpec) -> LoadedMap:
    check_name(spec.name)
    reference = spec.source.load()
    method = make_method(spec.method, spec.config_file, spec.map_dir)
    method.build_map(reference)
    return LoadedMap(spec.name, method, len(reference), spec)


def demo_spec(name: str = "demo") -> MapSpec:
    """The demo route's reference traverse with SAD: builds in about a second on two cores, needs no data."""
    return MapSpec(name=name, method="sad", source=ReferenceSource(dataset="demo"))


class MapStore:
    """The maps in one folder: list them, load one, save one (atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / SERVICE_FILE).is_file() and _NAME.match(p.name))

    def manifest(self, name: str) -> dict[str, Any]:
        path = self.root / check_name(name) / SERVICE_FILE
        if not path.is_file():
            raise MapStoreError(f"no map {name!r} in {self.root} (expected {path})")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise MapStoreError(f"cannot read {path}: {error}") from error
        if manifest.get("format") != FORMAT:
            raise MapStoreError(f"{path} has format {manifest.get('format')!r}; this service reads format {FORMAT}")
        return manifest

    def list(self) -> list[dict[str, Any]]:
        """name, method, n_places and created of every complete map."""
        return [{"name": n, **{k: self.manifest(n)[k] for k in ("method", "n_places", "created")}} for n in self.names()]

    def spec(self, name: str) -> MapSpec:
        manifest = self.manifest(name)
        folder = self.root / name
        map_dir = folder / MAP_FOLDER
        source = ReferenceSource(**manifest["source"])
        if source.folder is not None:
            source = dataclasses.replace(source, folder=str(folder / source.folder))
        config_file = manifest.get("config_file")
        return MapSpec(name=name, method=manifest["method"], source=source,
                       map_dir=str(map_dir) if map_dir.is_dir() else None,
                       config_file=str(folder / config_file) if config_file else None)

    def load(self, name: str) -> LoadedMap:
        loaded = load_map(self.spec(name))
        expected = self.manifest(name)["n_places"]
        if loaded.n_places != expected:
            raise MapStoreError(f"map {name!r} was built on {expected} places; its reference now has {loaded.n_places}")
        return loaded

    def begin(self, name: str) -> Path:
        """A new, empty staging folder for map ``name`` (hidden from :meth:`names`); :meth:`commit` or :meth:`abort` it."""
        check_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))

    def write(self, staging: Path, method: PlaceMethod, source: ReferenceSource, n_places: int,
              config_file: str | None = None) -> None:
        """The built ``method``'s map (if it saves one) and ``service.json`` into ``staging``, manifest last."""
        if type(method).saves_maps:
            method.save_map(staging / MAP_FOLDER)
        manifest = {"format": FORMAT, "method": method.name, "config_file": config_file, "n_places": n_places,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "source": dataclasses.asdict(source)}
        (staging / SERVICE_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    def commit(self, staging: Path, name: str) -> Path:
        """Rename a complete staging folder to ``<store>/<name>``: the map appears whole or not at all."""
        target = self.root / check_name(name)
        if target.exists():
            raise MapStoreError(f"map {name!r} already exists in {self.root}")
        if not (staging / SERVICE_FILE).is_file():
            raise MapStoreError(f"staging folder {staging} has no {SERVICE_FILE}: the map is incomplete")
        os.rename(staging, target)
        return target

    def abort(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Remove map ``name``: renamed to a hidden folder first (so an interrupted delete leaves no half map)."""
        target = self.root / check_name(name)
        if not (target / SERVICE_FILE).is_file():
            raise MapStoreError(f"no map {name!r} in {self.root}")
        trash = Path(tempfile.mkdtemp(prefix=f".{name}.deleted.", dir=self.root))
        os.rename(target, trash / name)
        shutil.rmtree(trash, ignore_errors=True)

    def save(self, name: str, method: PlaceMethod, source: ReferenceSource, n_places: int,
             config_file: str | None = None) -> Path:
        """Write a built map as ``<store>/<name>``: into a temporary folder first, then renamed into place."""
        if (self.root / check_name(name)).exists():
            raise MapStoreError(f"map {name!r} already exists in {self.root}")
        staging = self.begin(name)
        try:
            self.write(staging, method, source, n_places, config_file)
            return self.commit(staging, name)
        except BaseException:
            self.abort(staging)
            raise
