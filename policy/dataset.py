"""Training samples for a diffusion policy: fixed-length windows cut from the episodes of a :class:`DemoSet`.

Each sample is Diffusion Policy's window (Chi et al., ``SequenceSampler``): ``pred_horizon`` consecutive actions
and the first ``obs_horizon`` observations of the same steps (observation i was seen when action i was taken).
Windows never cross an episode boundary. At the start of an episode a window may begin up to
``obs_horizon - 1`` steps early, and at its end run up to ``action_horizon - 1`` steps late; the missing steps
are padded by repeating the episode's first observation/action (before) and its last ones (after), exactly as
Chi's sampler does with ``pad_before = obs_horizon - 1`` and ``pad_after = action_horizon - 1``. So an episode
of length L gives ``L - pred_horizon + action_horizon + obs_horizon - 1`` windows (none when that is not positive).

Batches are drawn without replacement from a stream of shuffled epochs; epoch e's order is a function of
(seed, e) alone, so the batch of training step k is a function of (seed, k): a resumed run sees the same batches
as an uninterrupted one without saving any sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policy.demos import DemoSet


def stream_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of random stream ``stream`` under ``seed`` (independent streams: batch
    order, diffusion noise, evaluation noise)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class WindowSpec:
    """Horizons of the windows: observations in, actions predicted, actions executed (Diffusion Policy's 2/16/8)."""

    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8

    def __post_init__(self) -> None:
        if min(self.obs_horizon, self.pred_horizon, self.action_horizon) < 1:
            raise ValueError(f"horizons must be positive, got {self}")
        if self.obs_horizon > self.pred_horizon:
            raise ValueError(f"obs_horizon {self.obs_horizon} exceeds pred_horizon {self.pred_horizon}")


def window_indices(length: int, spec: WindowSpec) -> np.ndarray:
    """(windows, pred_horizon) step indices into one episode of ``length`` steps, padding clamped to its ends."""
    first = -(spec.obs_horizon - 1)
    last = length - spec.pred_horizon + spec.action_horizon - 1
    starts = np.arange(first, last + 1)
    return np.clip(starts[:, None] + np.arange(spec.pred_horizon)[None, :], 0, length - 1)


class DemoWindows:
    """Every window of ``demos`` (all its episodes; pass ``demos.successful()`` to train on successes only):
    ``obs`` (W, obs_horizon, obs_dim) and ``action`` (W, pred_horizon, action_dim) float32 tensors."""

    def __init__(self, demos: DemoSet, spec: WindowSpec = WindowSpec()) -> None:
        self.spec = spec
        indices = [start + window_indices(int(length), spec)
                   for start, length in zip(demos.episode_starts, demos.episode_lengths)]
        indices = [block for block in indices if len(block)]
        if not indices:
            raise ValueError(f"no training windows: {demos.n_episodes} episodes of {demos.task}, none long enough for "
                             f"pred_horizon {spec.pred_horizon} with action_horizon {spec.action_horizon}")
        index = np.concatenate(indices)
        self.obs = torch.from_numpy(np.ascontiguousarray(demos.observations[index[:, : spec.obs_horizon]]))
        self.action = torch.from_numpy(np.ascontiguousarray(demos.actions[index]))
        self._epoch: tuple[int, int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.action)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"obs": self.obs[index], "action": self.action[index]}

    def _permutation(self, seed: int, epoch: int) -> torch.Tensor:
        if self._epoch is None or self._epoch[:2] != (seed, epoch):
            generator = torch.Generator().manual_seed(stream_seed(seed, 0, epoch))
            self._epoch = (seed, epoch, torch.randperm(len(self), generator=generator))
        return self._epoch[2]

    def batch_indices(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """The window indices of training step ``step``: positions [step * B, (step + 1) * B) of the stream of
        shuffled epochs (a batch may span two epochs)."""
        if batch_size < 1 or step < 0:
            raise ValueError(f"batch_size must be positive and step >= 0, got {batch_size} and {step}")
        parts, position, end = [], step * batch_size, (step + 1) * batch_size
        while position < end:
            epoch, offset = divmod(position, len(self))
            take = min(len(self) - offset, end - position)
            parts.append(self._permutation(seed, epoch)[offset : offset + take])
            position += take
        return torch.cat(parts)

    def batch(self, step: int, batch_size: int, seed: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The raw (unnormalised) batch of training step ``step``, on ``device``."""
        index = self.batch_indices(step, batch_size, seed)
        return {"obs": self.obs[index].to(device), "action": self.action[index].to(device)}


def sample_histories(demos: DemoSet, count: int, seed: int = 0, spec: WindowSpec = WindowSpec()) -> torch.Tensor:
    """``count`` observation histories (count, obs_horizon, obs_dim) drawn without replacement (seeded) from the
    windows of the successful demonstrations: the states a policy meets on the task, to measure its activity on."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    windows = DemoWindows(demos.successful(), spec)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=generator)[: min(count, len(windows))]
    return windows.obs[order]
