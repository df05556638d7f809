"""The contract every place-recognition method follows, and the registry that names them."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

METHODS: dict[str, type[PlaceMethod]] = {}


class PlaceMethod(ABC):
    """Builds a map from reference images, then gives a (n_query, n_reference) distance matrix for queries.

    Lower distance means more similar. Each method carries a typed, frozen dataclass ``config`` that is
    recorded with every result.
    """

    name: ClassVar[str]
    config_type: ClassVar[type]
    model_field: ClassVar[str | None] = None
    """The config field a trained artefact (``--model DIR`` on the command line) goes into, if the method has one."""
    saves_maps: ClassVar[bool] = False
    """Whether a built map can be saved (``save_map``) and given back through the config's ``map_dir``."""
    report_progress: Callable[[float, str], None] | None = None
    """If set, ``build_map`` may call it with the fraction done (0..1) and a message (the service's build jobs)."""

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.config_type()

    @abstractmethod
    def build_map(self, reference_images: Iterable[np.ndarray]) -> None:
        """Learn or store whatever the method needs from the reference traverse."""

    @abstractmethod
    def distances(self, query_images: Iterable[np.ndarray]) -> np.ndarray:
        """Distances from each query image to every reference place of the map."""

    def save_map(self, folder: str | Path) -> Path:
        """Save the built map so that ``map_dir`` loads it without building it again."""
        raise NotImplementedError(f"{self.name} builds its map on the fly; it has no map artefact")

    def map_bytes(self) -> int:
        """Memory the built map holds for queries (what a service keeps per map)."""
        return 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": dataclasses.asdict(self.config)}


def register_method(cls: type[PlaceMethod]) -> type[PlaceMethod]:
    METHODS[cls.name] = cls
    return cls


def create_method(name: str, config: Any | None = None) -> PlaceMethod:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](config)
