"""Gymnasium environments for place recognition, registered under the ``spikebot/`` namespace.

This module is the one place where they are registered; :mod:`vpr` calls :func:`register_envs` on import, which
costs only Gymnasium's import (the environments themselves, and any dataset, load when one is made).

- ``spikebot/RouteLocalization-v0`` (:class:`vpr.envs.route.RouteLocalizationEnv`): drive along a query traverse
  at a seeded speed profile and name the reference place of every frame.

The manipulation tasks of :mod:`policy.envs` share the namespace as ``spikebot/<task>`` (``spikebot/push-v3``...);
:func:`policy.envs.register_envs` registers those. The two families' ids cannot collide: place-recognition ids are
CamelCase, Metaworld task ids lower-case with hyphens.
"""

from __future__ import annotations

import gymnasium

ENV_NAMESPACE = "spikebot"
ROUTE_LOCALIZATION = f"{ENV_NAMESPACE}/RouteLocalization-v0"

ENTRY_POINTS = {ROUTE_LOCALIZATION: "vpr.envs.route:RouteLocalizationEnv"}


def register_envs() -> None:
    """Register every place-recognition environment with Gymnasium (again is a no-op)."""
    for env_id, entry_point in ENTRY_POINTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)
