"""Spiking methods: one modular network (``snn-modular``) or an ensemble of them (``snn-ensemble``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from vpr.methods.base import PlaceMethod, register_method
from vpr.preprocess import preprocess
from vpr.snn.config import EnsembleConfig
from vpr.snn.encoding import image_rates, query_rates
from vpr.snn.model import MapError, SpikingMap, fingerprint_rates


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class SNNMethodConfig:
    """``ensemble`` is trained on the reference traverse unless ``map_dir`` names a map built earlier;
    ``checkpoint_dir`` keeps finished members so an interrupted training resumes."""

    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    map_dir: str | None = None
    checkpoint_dir: str | None = None
    device: str = field(default_factory=default_device)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> SNNMethodConfig:
        """An ensemble configuration saved as JSON (``spikebot vpr calibrate`` writes these)."""
        data = json.loads(Path(path).read_text())
        return cls(ensemble=EnsembleConfig.from_dict(data.get("ensemble", data)), **overrides)


@dataclass(frozen=True)
class SNNModularConfig(SNNMethodConfig):
    ensemble: EnsembleConfig = field(default_factory=lambda: EnsembleConfig(seeds=(0,)))


def _epoch_bar(total: int, members: int = 1, report: Callable[[float, str], None] | None = None):
    """``SpikingMap.train``'s progress: a bar per member, and ``report(fraction of all epochs, message)`` if given."""
    started = 0

    def factory(description: str):
        nonlocal started
        member, started = started, started + 1
        bar = tqdm(total=total, desc=description, unit="epoch", disable=None, leave=False)

        def on_epoch(epoch: int, *_: Any) -> None:
            if report is not None:
                report(min(1.0, (member + (epoch + 1) / total) / members), f"training {description}, epoch {epoch + 1}/{total}")
            bar.update(1) if epoch + 1 < total else bar.close()

        return on_epoch

    return factory


@register_method
class SNNEnsembleMethod(PlaceMethod):
    """Modular spiking networks, each module learning one region of the map, their place scores summed."""

    name = "snn-ensemble"
    config_type = SNNMethodConfig
    saves_maps = True

    def _rates(self, images: Iterable[np.ndarray]) -> torch.Tensor:
        return image_rates(preprocess(images, self.config.ensemble.network.preprocess))

    def build_map(self, reference_images: Iterable[np.ndarray]) -> None:
        rates = self._rates(reference_images)
        fingerprint = fingerprint_rates(rates)
        if self.config.map_dir is not None:
            self.map = SpikingMap.load(self.config.map_dir)
            if self.map.reference_fingerprint != fingerprint:
                raise MapError(
                    f"map {self.config.map_dir} was built on other reference images "
                    f"(fingerprint {self.map.reference_fingerprint}, these are {fingerprint})"
                )
        else:
            ensemble = self.config.ensemble
            self.map = SpikingMap.train(rates, ensemble, fingerprint, device=self.config.device,
                                        progress=_epoch_bar(ensemble.network.epochs, len(ensemble.seeds), self.report_progress),
                                        checkpoint_dir=self.config.checkpoint_dir)
        self.readout = self.map.compile().to(self.config.device)

    def distances(self, query_images: Iterable[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            rates = query_rates(query_images, self.map.config.network).to(self.config.device)
            return (-self.map.scores(rates, self.readout)).cpu().numpy()

    def save_map(self, folder: str | Path) -> Path:
        self.map.save(folder)
        return Path(folder)

    def map_bytes(self) -> int:
        return sum(getattr(self.readout, name).nbytes for name in ("scaled_weights", "thresholds", "module", "slot", "weight"))

    def describe(self) -> dict[str, Any]:
        trained = getattr(self, "map", None)
        ensemble = trained.config if trained else self.config.ensemble
        described = {"name": self.name,
                     "config": {"ensemble": ensemble.to_dict(), "map_dir": self.config.map_dir, "device": self.config.device}}
        if trained:
            described["map_statistics"] = trained.statistics()
        return described

    def with_map(self, spiking_map: SpikingMap, name: str) -> SNNEnsembleMethod:
        """This method reading out another (sub-)map, named ``name`` in results: ablations of one trained map."""
        variant = type(self)(replace(self.config, ensemble=spiking_map.config))
        variant.name, variant.map, variant.readout = name, spiking_map, spiking_map.compile().to(self.config.device)
        return variant

    def ablations(self) -> list[SNNEnsembleMethod]:
        """The issue's ablation rows, all read out from this one trained ensemble."""
        network, n = self.map.config.network, len(self.map.members)
        other = "weighted" if network.assignment == "standard" else "standard"
        variants = [
            ("snn-modular, no regularisation", 1, {"hyperactive_threshold": None}),
            ("snn-modular", 1, {}),
            *((f"snn-ensemble x{k}", k, {}) for k in sorted({1, min(3, n), n}) if k > 1),
            (f"snn-ensemble x{n}, {other} assignment", n, {"assignment": other}),
            (f"snn-ensemble x{n}, no regularisation", n, {"hyperactive_threshold": None}),
            *([(f"snn-ensemble x{n}, no query shift", n, {"query_shift_px": 0})] if network.query_shift_px else []),
        ]
        ablated = [self.with_map(self.map.subset(k, **changes), label) for label, k, changes in variants]
        for combination in ("sum", "normalised_sum", "covered_mean"):
            if combination != self.map.config.combination and n > 1:
                recombined = replace(self.map.config, combination=combination)
                ablated.append(self.with_map(
                    SpikingMap(recombined, self.map.members, self.map.reference_fingerprint, self.map.member_seconds),
                    f"snn-ensemble x{n}, {combination.replace('_', ' ')}"))
        return ablated


@register_method
class SNNModularMethod(SNNEnsembleMethod):
    """A single modular spiking network (an ensemble of one)."""

    name = "snn-modular"
    config_type = SNNModularConfig
