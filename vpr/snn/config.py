"""Typed configuration of a modular spiking network, saved inside every trained map."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from vpr.preprocess import PreprocessConfig


@dataclass(frozen=True)
class NetworkConfig:
    """One modular network: architecture, neuron and plasticity constants, training schedule.

    Times are in milliseconds. Potentials are normalised: rest and reset 0, base threshold 1. Defaults follow
    Diehl & Cook / VPRSNN where they carry over (400 neurons and 25 places per module, membrane time constant
    100 ms, 350 ms presentations at up to 63.75 Hz per input, STDP time constants 20/20/40 ms, depression rate
    1e-4, weights in [0, 1] with each neuron's input weights rescaled to sum to 0.1 per input). The
    potentiation rate (3e-2, D&C: 1e-2), threshold step (0.001), input gain and epochs were explored on the
    Nordland calibration split only (docs/benchmarks.md); ``spikebot vpr calibrate`` chooses the rest.
    ``readout_precision`` is the type of the weights a query reads: a query is bound by reading them, and
    bfloat16 halves the bytes (the drives are accumulated and turned into rates in float32).
    ``query_shift_px`` > 0 presents each query at every offset up to that many pixels in x and y (at the input
    size) and lets each neuron answer to its best-aligned view, which tolerates the small changes of viewpoint
    between traverses; ``place_readout`` scores a place by the mean of its neurons (the papers') or by its best
    neuron (``max``). Both are readout settings, chosen on the calibration split.
    """

    n_neurons: int = 400
    places_per_module: int = 25
    region_split: Literal["contiguous", "shuffled"] = "contiguous"
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(28, 28, "pixel", 7))

    encoding: Literal["rate", "poisson_counts", "poisson"] = "rate"
    presentation_ms: float = 350.0
    max_rate_per_ms: float = 0.06375
    input_gain: float = 4.0
    dt_ms: float = 1.0

    tau_mem_ms: float = 100.0
    theta_plus: float = 0.001
    inhibition_latency_ms: float = 1.0
    query_readout: Literal["rate", "wta_counts"] = "rate"
    query_thresholds: Literal["adaptive", "base"] = "adaptive"
    readout_precision: Literal["float32", "bfloat16"] = "float32"
    query_shift_px: int = 0
    place_readout: Literal["mean", "max"] = "mean"

    tau_pre_ms: float = 20.0
    tau_post1_ms: float = 20.0
    tau_post2_ms: float = 40.0
    learning_rate_pre: float = 1e-4
    learning_rate_post: float = 3e-2
    weight_max: float = 1.0
    weight_sum_per_input: float = 0.1
    initial_weight_max: float = 0.3

    min_spikes: int = 5
    gain_step: float = 0.5
    max_repeats: int = 4
    epochs: int = 10

    assignment: Literal["standard", "weighted"] = "standard"
    hyperactive_threshold: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_neurons < 1 or self.places_per_module < 1 or self.epochs < 0:
            raise ValueError("n_neurons and places_per_module must be positive, epochs >= 0")
        if min(self.presentation_ms, self.tau_mem_ms, self.dt_ms, self.max_rate_per_ms) <= 0:
            raise ValueError("presentation_ms, tau_mem_ms, dt_ms and max_rate_per_ms must be positive")
        if self.encoding not in ("rate", "poisson_counts", "poisson"):
            raise ValueError(f"unknown encoding {self.encoding!r}: expected rate, poisson_counts or poisson")
        if self.assignment not in ("standard", "weighted"):
            raise ValueError(f"unknown assignment {self.assignment!r}: expected 'standard' or 'weighted'")
        if self.query_readout not in ("rate", "wta_counts"):
            raise ValueError(f"unknown query_readout {self.query_readout!r}: expected 'rate' or 'wta_counts'")
        if self.query_thresholds not in ("adaptive", "base"):
            raise ValueError(f"unknown query_thresholds {self.query_thresholds!r}: expected 'adaptive' or 'base'")
        if self.readout_precision not in ("float32", "bfloat16"):
            raise ValueError(f"unknown readout_precision {self.readout_precision!r}: expected 'float32' or 'bfloat16'")
        if self.place_readout not in ("mean", "max"):
            raise ValueError(f"unknown place_readout {self.place_readout!r}: expected 'mean' or 'max'")
        if self.query_shift_px < 0:
            raise ValueError(f"query_shift_px must be >= 0, got {self.query_shift_px}")
        if self.region_split not in ("contiguous", "shuffled"):
            raise ValueError(f"unknown region_split {self.region_split!r}")
        if self.hyperactive_threshold is not None and self.hyperactive_threshold < 1:
            raise ValueError("hyperactive_threshold must be >= 1 (places) or None")
        if self.max_rate_per_ms * self.dt_ms > 1:
            raise ValueError("max_rate_per_ms * dt_ms must be <= 1 (a spike probability per step)")

    @property
    def n_steps(self) -> int:
        """Steps of a simulated presentation (Poisson encoding and the reference simulation)."""
        return int(round(self.presentation_ms / self.dt_ms))

    @property
    def n_inputs(self) -> int:
        return self.preprocess.width * self.preprocess.height

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network settings: {', '.join(sorted(unknown))}")
        data = dict(data)
        if isinstance(data.get("preprocess"), dict):
            data["preprocess"] = PreprocessConfig(**data["preprocess"])
        return cls(**data)


@dataclass(frozen=True)
class EnsembleConfig:
    """Several modular networks that differ in seed (and optionally size); their place scores are combined."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    seeds: tuple[int, ...] = (0, 10, 20, 30, 40)
    neurons_per_member: tuple[int, ...] | None = None
    combination: Literal["sum", "normalised_sum", "covered_mean"] = "sum"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("an ensemble needs at least one seed")
        if self.neurons_per_member is not None and len(self.neurons_per_member) != len(self.seeds):
            raise ValueError("neurons_per_member needs one entry per seed")
        if self.combination not in ("sum", "normalised_sum", "covered_mean"):
            raise ValueError(f"unknown combination {self.combination!r}: expected sum, normalised_sum or covered_mean")

    def member_configs(self) -> list[NetworkConfig]:
        from dataclasses import replace

        sizes = self.neurons_per_member or (self.network.n_neurons,) * len(self.seeds)
        return [replace(self.network, seed=seed, n_neurons=size) for seed, size in zip(self.seeds, sizes)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleConfig:
        data = dict(data)
        data["network"] = NetworkConfig.from_dict(data.get("network", {}))
        data["seeds"] = tuple(data.get("seeds", (0,)))
        if data.get("neurons_per_member") is not None:
            data["neurons_per_member"] = tuple(data["neurons_per_member"])
        return cls(**data)
