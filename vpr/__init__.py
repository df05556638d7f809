"""Visual place recognition: datasets, preprocessing, methods, sequence matching and metrics.

Data flows one way: dataset -> preprocess -> method (distance matrix) -> sequence matching -> metrics/report.
Closed-loop localisation runs as Gymnasium environments (:mod:`vpr.envs`, registered here on import as
``spikebot/...``) driven by agents (:mod:`vpr.agents`).
"""

from vpr.envs import register_envs as _register_envs

_register_envs()
