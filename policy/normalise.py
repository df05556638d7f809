"""Min-max normalisation of observations and actions to [-1, 1] per dimension (as Diffusion Policy), saved with
the policy so that a checkpoint alone can act.

A dimension that does not vary in the training data (range below ``eps``; Metaworld's state vector pads unused
object slots with zeros) is only shifted, to 0 at its training value, not scaled: it stays finite however far
it moves at test time.
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

    def __post_init__(self) -> None:
        if self.low.shape != self.high.shape or self.low.dim() != 1:
            raise ValueError(f"low and high must be 1-D and of one shape, got {tuple(self.low.shape)} and {tuple(self.high.shape)}")
        if bool((self.high < self.low).any()) or not bool(torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise ValueError("bounds must be finite with high >= low")

    @classmethod
    def fit(cls, data: torch.Tensor | np.ndarray, eps: float = 1e-4) -> MinMax:
        """Bounds over every leading dimension of ``data`` (..., dim)."""
        data = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data, dtype=torch.float32)
        flat = data.reshape(-1, data.shape[-1])
        if len(flat) == 0:
            raise ValueError("cannot fit a normaliser to no data")
        return cls(flat.amin(dim=0).cpu(), flat.amax(dim=0).cpu(), eps)

    @property
    def dim(self) -> int:
        return self.low.numel()

    def _scale_offset(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.high - self.low
        constant = span < self.eps
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
        return y / scale + centre

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected {self.dim} dimensions in the last axis, got shape {tuple(x.shape)}")

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "eps": self.eps}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MinMax:
        return cls(torch.tensor(values["low"], dtype=torch.float32), torch.tensor(values["high"], dtype=torch.float32),
                   float(values.get("eps", 1e-4)))


@dataclass(frozen=True)
class Normaliser:
    """One :class:`MinMax` per named field (``obs``, ``action``)."""

    fields: dict[str, MinMax]

    @classmethod
    def fit(cls, eps: float = 1e-4, **data: torch.Tensor | np.ndarray) -> Normaliser:
        """``Normaliser.fit(obs=observations, action=actions)``, each (..., dim)."""
        return cls({name: MinMax.fit(values, eps) for name, values in data.items()})

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
