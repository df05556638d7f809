"""Spiking transformer diffusion policy for manipulation (issue 6), in the model / policy / workspace / runner split.

- ``envs``: four Metaworld v3 tasks of graded difficulty on the 39-D state, their seeded Gymnasium environments
  (``spikebot/<task>``) and scripted experts;
- ``demos``: expert demonstrations recorded per seed, saved as ``.npz`` + JSON manifest (``spikebot-demos/1``)
  and loaded back checked;
- ``cli``: ``spikebot policy ...``.

The networks, the noise scheduler and normaliser, training and evaluation come in later parts of issue 6.
"""
