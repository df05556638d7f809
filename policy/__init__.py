"""Spiking transformer diffusion policy for manipulation (issue 6), in the model / policy / workspace / runner split.

- ``envs``: four Metaworld v3 tasks of graded difficulty on the 39-D state, their seeded Gymnasium environments
  (``spikebot/<task>``) and scripted experts;
- ``demos``: expert demonstrations recorded per seed, saved as ``.npz`` + JSON manifest (``spikebot-demos/1``)
  and loaded back checked;
- ``models``: the noise-prediction networks (spiking ``stmdp``, ``transformer`` baseline);
- ``diffusion``, ``normalise``: the policy (network + normaliser + DDPM/DDIM schedulers, EMA, checkpoints);
- ``dataset``: Diffusion Policy's training windows from demonstrations;
- ``workspace``: the typed ``TrainConfig`` and the resumable training loop;
- ``runner``: seeded evaluation in the environment (success, episode length, latency per action chunk);
- ``plots``: success over training;
- ``cli``: ``spikebot policy demos|train|eval|plot``.
"""
