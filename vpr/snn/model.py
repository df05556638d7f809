"""A trained modular network, an ensemble of them, and the self-describing map artefact they are saved as."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikebot.artefacts import file_sha256, read_checked_manifest
from spikebot.provenance import __version__
from vpr.errors import SpikebotError
from vpr.snn.config import EnsembleConfig, NetworkConfig
from vpr.snn.encoding import drive_scale
from vpr.snn.readout import assign_neurons, boosted_winner_counts, place_scores, query_responses, winner_spike_counts
from vpr.snn.training import train_modules

ARTEFACT_FORMAT = "spikebot-snn-map/1"
_MEMBER_ARRAYS = ("thresholds", "regions", "assigned_place", "ambiguity_weight", "places_fired")


class MapError(SpikebotError):
    """A map artefact is missing, corrupt, from an incompatible version, or built on other reference images."""


@dataclass
class ModularNetwork:
    """One trained modular network: per module its region and per neuron its threshold, assigned place, ambiguity
    weight and the number of map places it wins (its hyperactivity); input weights are kept for assigned neurons
    only, the ones any readout can use (in flat module-major order, as float16-exact float32)."""

    config: NetworkConfig
    thresholds: torch.Tensor  # (modules, neurons)
    regions: torch.Tensor  # (modules, places_per_module), -1 padding
    assigned_place: torch.Tensor  # (modules, neurons), -1 unassigned
    ambiguity_weight: torch.Tensor  # (modules, neurons)
    places_fired: torch.Tensor  # (modules, neurons)
    assigned_weights: torch.Tensor  # (inputs, assigned neurons)
    n_places: int

    @classmethod
    def train(cls, rates: torch.Tensor, config: NetworkConfig, *, device: str = "cpu",
              on_epoch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> ModularNetwork:
        weights, thresholds, regions = train_modules(rates, config, device=device, on_epoch=on_epoch)
        return cls.from_training(rates, config, weights, thresholds, regions)

    @classmethod
    def from_training(cls, rates: torch.Tensor, config: NetworkConfig, weights: torch.Tensor,
                      thresholds: torch.Tensor, regions: torch.Tensor) -> ModularNetwork:
        """Label a trained network (Diehl & Cook): show every module its own places with the inhibition on
        (boosting the input while a module fires fewer than ``min_spikes``) and assign each neuron the place it
        fires most for; then count for every neuron how many places of the WHOLE map it wins, the hyperactivity
        used to drop neurons that answer outside their region."""
        # Stored as float16: quantise now, so the map in memory scores exactly as the map reloaded from disk.
        weights, thresholds = weights.cpu().half().float(), thresholds.cpu().clone()
        n_modules, n_inputs, n_neurons = weights.shape
        own_drive = torch.bmm(rates[regions.clamp(min=0)], weights) * drive_scale(config)
        assigned_place, ambiguity_weight = assign_neurons(boosted_winner_counts(own_drive, thresholds.unsqueeze(1), config), regions)
        flat_weights = weights.permute(1, 0, 2).reshape(n_inputs, -1)
        module = torch.arange(n_modules).repeat_interleave(n_neurons)
        fired = torch.zeros(n_modules * n_neurons, dtype=torch.long)
        for start in range(0, len(rates), 256):
            drive = rates[start : start + 256] @ flat_weights * drive_scale(config)
            fired += (winner_spike_counts(drive, thresholds.reshape(-1), module, config) > 0).sum(dim=0)
        assigned = assigned_place.reshape(-1) >= 0
        return cls(config, thresholds, regions, assigned_place, ambiguity_weight, fired.view_as(thresholds),
                   flat_weights[:, assigned].contiguous(), n_places=len(rates))

    @property
    def n_modules(self) -> int:
        return self.regions.shape[0]

    def readout_neurons(self, hyperactive_threshold: int | None) -> torch.Tensor:
        """Flat indices of the neurons scored at query time: assigned, and not hyperactive."""
        keep = self.assigned_place.reshape(-1) >= 0
        if hyperactive_threshold is not None:
            keep &= self.places_fired.reshape(-1) < hyperactive_threshold
        return torch.nonzero(keep).squeeze(1)

    def hyperactive_share(self, hyperactive_threshold: int | None) -> float:
        if hyperactive_threshold is None:
            return 0.0
        return float((self.places_fired >= hyperactive_threshold).float().mean())

    def compile(self, hyperactive_threshold: int | None, assignment: str) -> CompiledReadout:
        kept = self.readout_neurons(hyperactive_threshold)
        assigned = self.assigned_place.reshape(-1) >= 0
        column = torch.cumsum(assigned, dim=0) - 1  # flat neuron index -> column of assigned_weights
        weight = self.ambiguity_weight.reshape(-1)[kept] if assignment == "weighted" else torch.ones(len(kept))
        thresholds = self.thresholds if self.config.query_thresholds == "adaptive" else torch.ones_like(self.thresholds)
        module = torch.div(kept, self.thresholds.shape[1], rounding_mode="floor")
        precision = getattr(torch, self.config.readout_precision)
        return CompiledReadout(
            self.config, (self.assigned_weights[:, column[kept]] * drive_scale(self.config)).T.contiguous().to(precision),
            thresholds.reshape(-1)[kept], module, self.assigned_place.reshape(-1)[kept], weight,
            n_members=1, n_places=self.n_places,
        )


@dataclass
class CompiledReadout:
    """Only what a query needs, for one member or several fused into one matrix product: the kept neurons'
    scaled weights and thresholds, their module (numbered across members), their slot ``member * n_places +
    place`` and their weight. A query over the whole map is then one product plus one scatter."""

    config: NetworkConfig
    scaled_weights: torch.Tensor  # (kept neurons, inputs), neuron-major, in the readout precision
    thresholds: torch.Tensor
    module: torch.Tensor
    slot: torch.Tensor
    weight: torch.Tensor
    n_members: int
    n_places: int

    @classmethod
    def fuse(cls, readouts: list[CompiledReadout]) -> CompiledReadout:
        module_offsets = np.cumsum([0] + [int(r.module.max()) + 1 if len(r.module) else 0 for r in readouts])
        return cls(
            readouts[0].config,
            torch.cat([r.scaled_weights for r in readouts], dim=0),
            torch.cat([r.thresholds for r in readouts]),
            torch.cat([r.module + int(offset) for r, offset in zip(readouts, module_offsets)]),
            torch.cat([r.slot + index * r.n_places for index, r in enumerate(readouts)]),
            torch.cat([r.weight for r in readouts]),
            n_members=len(readouts), n_places=readouts[0].n_places,
        )

    def to(self, device: str | torch.device) -> CompiledReadout:
        tensors = {name: getattr(self, name).to(device) for name in ("scaled_weights", "thresholds", "module", "slot", "weight")}
        return replace(self, **tensors)

    @cached_property
    def covered(self) -> torch.Tensor:
        """(members, places): which places each member has neurons for."""
        return (torch.bincount(self.slot, minlength=self.n_members * self.n_places) > 0).view(self.n_members, -1)

    @cached_property
    def covering(self) -> torch.Tensor:
        """(places,) float32: how many members have neurons for each place."""
        return self.covered.sum(dim=0).to(torch.float32)

    def member_scores(self, rates: torch.Tensor) -> torch.Tensor:
        """(queries, members, places) weighted mean responses of each member's neurons of each place."""
        responses = query_responses(self.drives(rates), self.thresholds, self.module, self.config)
        return place_scores(responses, self.slot, self.weight, self.n_members * self.n_places,
                            reduce=self.config.place_readout).view(len(rates), self.n_members, -1)

    def drives(self, rates: torch.Tensor) -> torch.Tensor:
        """(queries, neurons) input currents in float32. One query (a robot's frame) is a matrix-vector product,
        which torch's CPU kernels run about twice as fast in bfloat16 as the general product of a batch.

        ``rates`` (queries, views, inputs) present each query at several small offsets (``query_shift_px``, like
        fixational eye movements); a neuron's drive is its strongest over the views, so it fires as early as
        for the best-aligned view. The views of one query share one pass over the weights."""
        rates = rates.to(self.scaled_weights.dtype)
        if rates.dim() == 3:
            return torch.nn.functional.linear(rates, self.scaled_weights).amax(dim=1).to(torch.float32)
        if len(rates) == 1:
            return torch.mv(self.scaled_weights, rates[0]).unsqueeze(0).to(torch.float32)
        return torch.nn.functional.linear(rates, self.scaled_weights).to(torch.float32)

    def scores(self, rates: torch.Tensor) -> torch.Tensor:
        return self.member_scores(rates).sum(dim=1)


@dataclass
class SpikingMap:
    """An ensemble of modular networks over one reference traverse (one member: a single modular network)."""

    config: EnsembleConfig
    members: list[ModularNetwork]
    reference_fingerprint: str
    member_seconds: list[float] = field(default_factory=list)

    @property
    def training_seconds(self) -> float:
        return sum(self.member_seconds)

    @classmethod
    def train(cls, rates: torch.Tensor, config: EnsembleConfig, fingerprint: str, *, device: str = "cpu",
              progress: Callable[[str], Callable[..., None]] | None = None,
              checkpoint_dir: str | Path | None = None) -> SpikingMap:
        """Train every member. With ``checkpoint_dir`` each finished member is saved there at once, and a member
        already saved with the same configuration and reference fingerprint is loaded instead of retrained, so
        an interrupted build resumes where it stopped."""
        members, seconds = [], []
        for index, member_config in enumerate(config.member_configs()):
            checkpoint = Path(checkpoint_dir) / f"member-{index}.pt" if checkpoint_dir is not None else None
            resumed = _load_member(checkpoint, member_config, fingerprint) if checkpoint is not None else None
            if resumed is not None:
                members.append(resumed[0])
                seconds.append(resumed[1])
                continue
            start = time.perf_counter()
            on_epoch = progress(f"member {index + 1}/{len(config.seeds)}") if progress else None
            members.append(ModularNetwork.train(rates, member_config, device=device, on_epoch=on_epoch))
            seconds.append(time.perf_counter() - start)
            if checkpoint is not None:
                _save_member(checkpoint, members[-1], fingerprint, seconds[-1])
        return cls(config, members, fingerprint, seconds)

    def subset(self, n_members: int, **network_changes: Any) -> SpikingMap:
        """The first ``n_members`` members, read out with changed query-time settings (for ablations)."""
        network = replace(self.config.network, **network_changes)
        config = replace(self.config, network=network, seeds=self.config.seeds[:n_members],
                         neurons_per_member=self.config.neurons_per_member[:n_members] if self.config.neurons_per_member else None)
        members = [replace(member, config=replace(member.config, **network_changes)) for member in self.members[:n_members]]
        return SpikingMap(config, members, self.reference_fingerprint, self.member_seconds[:n_members])

    def compile(self) -> CompiledReadout:
        network = self.config.network
        return CompiledReadout.fuse([member.compile(network.hyperactive_threshold, network.assignment) for member in self.members])

    def scores(self, rates: torch.Tensor, readout: CompiledReadout | None = None) -> torch.Tensor:
        """(queries, places) ensemble scores, higher meaning more likely the same place.

        ``sum`` adds the members' raw scores (the papers); ``normalised_sum`` first divides each member's scores
        by its best score per query; ``covered_mean`` averages, per place, over the members that have neurons
        for it, so a place is not penalised because some member left it without neurons. A place that no member
        has neurons for gets the query's mean score: no evidence either way, so that sequence matching can pass
        through it instead of treating it as the worst match.
        """
        readout = readout or self.compile()
        member_scores = readout.member_scores(rates)
        if self.config.combination == "normalised_sum":
            member_scores = member_scores / member_scores.amax(dim=2, keepdim=True).clamp(min=1e-12)
        total = member_scores.sum(dim=1)
        covering = readout.covering.to(total.dtype)
        if self.config.combination == "covered_mean":
            total = total / covering.clamp(min=1.0)
        uncovered = covering == 0
        if uncovered.any() and not uncovered.all():
            neutral = total[:, ~uncovered].mean(dim=1, keepdim=True)
            total = torch.where(uncovered, neutral, total)
        return total

    def statistics(self) -> dict[str, Any]:
        threshold = self.config.network.hyperactive_threshold
        neurons = sum(member.thresholds.numel() for member in self.members)
        return {
            "members": len(self.members),
            "modules_per_member": [member.n_modules for member in self.members],
            "neurons": neurons,
            "synapses": sum(member.thresholds.numel() * member.config.n_inputs for member in self.members),
            "synapses_stored": sum(member.assigned_weights.numel() for member in self.members),
            "assigned_share": float(np.mean([float((m.assigned_place >= 0).float().mean()) for m in self.members])),
            "hyperactive_removed_share": float(np.mean([m.hyperactive_share(threshold) for m in self.members])),
            "training_seconds": self.training_seconds,
        }

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for index, member in enumerate(self.members):
            arrays[f"{index}.assigned_weights"] = member.assigned_weights.half().numpy()
            for name in _MEMBER_ARRAYS:
                arrays[f"{index}.{name}"] = getattr(member, name).numpy()
        array_path = directory / "arrays.npz"
        np.savez(array_path, **arrays)
        manifest = {
            "format": ARTEFACT_FORMAT,
            "spikebot_version": __version__,
            "config": self.config.to_dict(),
            "n_places": self.members[0].n_places,
            "reference_fingerprint": self.reference_fingerprint,
            "member_seconds": self.member_seconds,
            "arrays_sha256": file_sha256(array_path),
            "statistics": self.statistics(),
        }
        (directory / "map.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SpikingMap:
        directory = Path(directory)
        array_path = directory / "arrays.npz"
        manifest = read_checked_manifest(directory, "map.json", array_path.name, ARTEFACT_FORMAT, "map", MapError)
        try:
            config = EnsembleConfig.from_dict(manifest["config"])
            with np.load(array_path) as arrays:
                members = [
                    ModularNetwork(
                        member_config,
                        *(torch.from_numpy(arrays[f"{i}.{name}"]) for name in _MEMBER_ARRAYS),
                        assigned_weights=torch.from_numpy(arrays[f"{i}.assigned_weights"].astype(np.float32)),
                        n_places=int(manifest["n_places"]),
                    )
                    for i, member_config in enumerate(config.member_configs())
                ]
        except (KeyError, ValueError, TypeError) as error:
            raise MapError(f"map {directory} is inconsistent with its manifest: {error}") from error
        return cls(config, members, manifest["reference_fingerprint"], list(manifest.get("member_seconds", [])))


def _save_member(path: Path, member: ModularNetwork, fingerprint: str, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: getattr(member, name) for name in (*_MEMBER_ARRAYS, "assigned_weights")}
    partial = path.with_suffix(".partial")
    torch.save({"config": member.config.to_dict(), "fingerprint": fingerprint, "seconds": seconds,
                "n_places": member.n_places, "arrays": state}, partial)
    partial.replace(path)  # atomic: an interrupt never leaves a half-written member behind


def _load_member(path: Path, config: NetworkConfig, fingerprint: str) -> tuple[ModularNetwork, float] | None:
    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=True)
    if saved["config"] != json.loads(json.dumps(config.to_dict())) or saved["fingerprint"] != fingerprint:
        return None
    return ModularNetwork(config, **saved["arrays"], n_places=saved["n_places"]), saved["seconds"]


def fingerprint_rates(rates: torch.Tensor) -> str:
    """Identifies the reference images a map was trained on (their preprocessed rates)."""
    return hashlib.sha256(rates.numpy().astype(np.float32).tobytes()).hexdigest()[:16]
