"""Min-max normalisation of observations and actions to [-1, 1] per dimension (as Diffusion Policy), saved with
the policy so that a checkpoint alone can act.

A dimension that does not vary in the training data (range below ``eps``; Metaworld's state vector pads unused
object slots with zeros) is only shifted, to 0 at its training value, not scaled: it stays finite however far
it moves at test time. Unnormalising gives back its training value whatever the network says there: an action
component the demonstrations never moved (Metaworld's gripper effort on button-press, always 0) is never
executed as the sampler's residual noise.

A dimension that varies only a little (range between ``eps`` and ``min_span``) is scaled as if its range were
``min_span``, centred on its training range: stretching a nearly constant signal onto [-1, 1] turns its noise
into a large input and a small drift at test time into a huge one. Metaworld's gripper opening varies by 0.02
in button-press demonstrations (effort 0): min-max scaled it reached -40 to -100 when the fingers drifted to
0.9-0.7 in evaluation, and the policy, driven off its training distribution, closed the gripper further and
jittered against the wall. Observations are fitted with a ``min_span`` of 0.1 (10 cm for positions), actions
(range 2) with none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class MinMax:
    """Per-dimension bounds ``low``/``high`` (float32, 1-D); ``normalise`` maps [low, high] onto [-1, 1]."""

    low: torch.Tensor
    high: torch.Tensor
    eps: float = 1e-4
    min_span: float = 0.0

    def __post_init__(self) -> None:
        if not self.min_span >= 0.0:
            raise ValueError(f"min_span must be >= 0, got {self.min_span}")
        if self.low.shape != self.high.shape or self.low.dim() != 1:
            raise ValueError(f"low and high must be 1-D and of one shape, got {tuple(self.low.shape)} and {tuple(self.high.shape)}")
        if bool((self.high < self.low).any()) or not bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise ValueError("bounds must be finite with high >= low")

    @classmethod
    def fit(cls, data: torch.Tensor | np.ndarray, eps: float = 1e-4, min_span: float = 0.0) -> MinMax:
        """Bounds over every leading dimension of ``data`` (..., dim)."""
        data = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data, dtype=torch.float32)
        flat = data.reshape(-1, data.shape[-1])
        if len(flat) == 0:
            raise ValueError("cannot fit a normaliser to no data")
        return cls(flat.amin(dim=0).cpu(), flat.amax(dim=0).cpu(), eps, min_span)

    @property
    def dim(self) -> int:
        return self.low.numel()

    @property
    def constant(self) -> torch.Tensor:
        """(dim,) bool: the dimensions that did not vary in the training data (range below ``eps``)."""
        return (self.high - self.low) < self.eps

    def _scale_offset(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.high - self.low
        constant = self.constant
        span = span.clamp(min=self.min_span)
        scale = torch.where(constant, torch.ones_like(span), 2.0 / torch.where(constant, torch.ones_like(span), span))
        centre = torch.where(constant, self.low, (self.low + self.high) / 2)
        return scale.to(like.device, like.dtype), centre.to(like.device, like.dtype)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        scale, centre = self._scale_offset(x)
        return (x - centre) * scale

    def unnormalise(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        scale, centre = self._scale_offset(y)
        return torch.where(self.constant.to(y.device), centre, y / scale + centre)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected {self.dim} dimensions in the last axis, got shape {tuple(x.shape)}")

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "eps": self.eps, "min_span": self.min_span}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MinMax:
        return cls(torch.tensor(values["low"], dtype=torch.float32), torch.tensor(values["high"], dtype=torch.float32),
                   float(values.get("eps", 1e-4)), float(values.get("min_span", 0.0)))


@dataclass(frozen=True)
class Normaliser:
    """One :class:`MinMax` per named field (``obs``, ``action``)."""

    fields: dict[str, MinMax]

    @classmethod
    def fit(cls, eps: float = 1e-4, min_span: dict[str, float] | None = None,
            **data: torch.Tensor | np.ndarray) -> Normaliser:
        """``Normaliser.fit(obs=observations, action=actions)``, each (..., dim); ``min_span`` per field name
        (``{"obs": 0.1}``), 0 for fields it does not name."""
        min_span = min_span or {}
        unknown = set(min_span) - set(data)
        if unknown:
            raise ValueError(f"min_span names fields that are not fitted: {sorted(unknown)}")
        return cls({name: MinMax.fit(values, eps, min_span.get(name, 0.0)) for name, values in data.items()})

    def __getitem__(self, name: str) -> MinMax:
        if name not in self.fields:
            raise KeyError(f"the normaliser has no field {name!r} (has {sorted(self.fields)})")
        return self.fields[name]

    def normalise(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self[name].normalise(x)

    def unnormalise(self, name: str, y: torch.Tensor) -> torch.Tensor:
        return self[name].unnormalise(y)

    def to_dict(self) -> dict[str, Any]:
        return {name: field.to_dict() for name, field in self.fields.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normaliser:
        return cls({name: MinMax.from_dict(field) for name, field in values.items()})
