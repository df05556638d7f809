"""Choosing the input, epochs, the hyperactive-neuron threshold and the readout on a calibration split, never on
test queries.

For each candidate input (image size and patch normalisation) one network is trained once on the calibration
references; snapshots at each candidate epoch count are labelled and scored on the calibration queries for every
readout setting, and the best Recall@1 wins. Fifty calibration queries move Recall@1 in steps of 0.02, so ties are
common: they go to the better Recall@5, then Recall@10 (a rule fixed before any rerun, so that a tie is decided by
calibration data too), and only then to the earlier input, fewer epochs and the earlier setting in the grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from vpr.data import GroundTruth
from vpr.metrics import recall_at_n
from vpr.preprocess import PreprocessConfig, preprocess
from vpr.snn.config import EnsembleConfig, NetworkConfig
from vpr.snn.encoding import image_rates, query_rates
from vpr.snn.model import ModularNetwork, SpikingMap
from vpr.snn.training import train_modules

COMBINATIONS = ("sum", "normalised_sum", "covered_mean")
RANKED_RECALLS = (1, 5, 10)


def _recalls(scores: torch.Tensor, truth: GroundTruth) -> dict[str, float]:
    recalls = recall_at_n((-scores).numpy(), truth, RANKED_RECALLS)
    return {f"recall_at_{n}": recalls[n] for n in RANKED_RECALLS}


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the best Recall@1, ties broken by Recall@5, then Recall@10, then the earliest row."""
    return max(enumerate(rows), key=lambda item: (*(item[1][f"recall_at_{n}"] for n in RANKED_RECALLS), -item[0]))[1]


@dataclass(frozen=True)
class CalibrationGrid:
    epochs: tuple[int, ...] = (5, 10, 20)
    hyperactive_thresholds: tuple[int | None, ...] = (None, 200, 100, 50, 25, 10)
    query_thresholds: tuple[str, ...] = ("adaptive", "base")
    assignments: tuple[str, ...] = ("standard", "weighted")
    place_readouts: tuple[str, ...] = ("mean", "max")
    query_shifts: tuple[int, ...] = (0, 1, 2)


def calibrate_inputs(
    reference_images: Sequence[np.ndarray],
    query_images: Sequence[np.ndarray],
    truth: GroundTruth,
    network: NetworkConfig,
    inputs: tuple[PreprocessConfig, ...],
    grid: CalibrationGrid = CalibrationGrid(),
    *,
    device: str = "cpu",
) -> tuple[NetworkConfig, list[dict[str, Any]]]:
    """:func:`calibrate` for each candidate input; rows carry their ``input``. The input is a choice like any
    other: a larger image can raise accuracy but every query reads ``width x height`` weights per neuron."""
    if not inputs:
        raise ValueError("calibration needs at least one candidate input")
    best: tuple[tuple[float, ...], NetworkConfig] | None = None
    rows: list[dict[str, Any]] = []
    for candidate in inputs:
        network_for_input = replace(network, preprocess=candidate)
        reference_rates = image_rates(preprocess(reference_images, candidate))
        shifted_queries = {shift: query_rates(query_images, replace(network_for_input, query_shift_px=shift))
                           for shift in grid.query_shifts}
        chosen, candidate_rows = calibrate(reference_rates, shifted_queries, truth, network_for_input, grid, device=device)
        label = f"{candidate.width}x{candidate.height} {candidate.patch_mode} {candidate.patch_size}"
        rows += [{"input": label, **row} for row in candidate_rows]
        recall = tuple(best_row(candidate_rows)[f"recall_at_{n}"] for n in RANKED_RECALLS)
        if best is None or recall > best[0]:
            best = (recall, chosen)
    return best[1], rows  # type: ignore[index]


def calibrate(
    reference_rates: torch.Tensor,
    shifted_queries: dict[int, torch.Tensor],
    truth: GroundTruth,
    network: NetworkConfig,
    grid: CalibrationGrid = CalibrationGrid(),
    *,
    device: str = "cpu",
) -> tuple[NetworkConfig, list[dict[str, Any]]]:
    """Returns the chosen configuration and one row per setting tried (with its calibration Recall@1).

    ``shifted_queries``: the calibration queries' rates for each ``query_shift_px`` of the grid (from
    :func:`vpr.snn.encoding.query_rates`)."""
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep_snapshot(epoch: int, weights: torch.Tensor, thresholds: torch.Tensor) -> None:
        if epoch + 1 in grid.epochs:
            snapshots[epoch + 1] = (weights.cpu().clone(), thresholds.cpu().clone())

    _, _, regions = train_modules(reference_rates, replace(network, epochs=max(grid.epochs)), device=device, on_epoch=keep_snapshot)
    rows = []
    for epochs in sorted(grid.epochs):
        trained = ModularNetwork.from_training(reference_rates, replace(network, epochs=epochs), *snapshots[epochs], regions)
        for query_thresholds, place_readout, shift in itertools.product(grid.query_thresholds, grid.place_readouts,
                                                                         grid.query_shifts):
            trained.config = replace(network, epochs=epochs, query_thresholds=query_thresholds,
                                     place_readout=place_readout, query_shift_px=shift)
            for assignment in grid.assignments:
                for threshold in grid.hyperactive_thresholds:
                    scores = trained.compile(threshold, assignment).scores(shifted_queries[shift])
                    rows.append({
                        "epochs": epochs, "query_thresholds": query_thresholds, "place_readout": place_readout,
                        "query_shift_px": shift, "assignment": assignment, "hyperactive_threshold": threshold,
                        "hyperactive_share": trained.hyperactive_share(threshold),
                        **_recalls(scores, truth),
                    })
    best = best_row(rows)
    chosen = replace(network, epochs=best["epochs"], query_thresholds=best["query_thresholds"],
                     place_readout=best["place_readout"], query_shift_px=best["query_shift_px"], assignment=best["assignment"],
                     hyperactive_threshold=best["hyperactive_threshold"])
    return chosen, rows


def calibrate_combination(
    reference_rates: torch.Tensor, query_rates: torch.Tensor, truth: GroundTruth, ensemble: EnsembleConfig,
    *, device: str = "cpu",
) -> tuple[EnsembleConfig, list[dict[str, Any]]]:
    """Train the whole ensemble on the calibration references and choose how members' scores are combined.

    Rows also give each member alone (its Recall@1 and the share of places it has neurons for), which shows how
    much the members differ."""
    trained = SpikingMap.train(reference_rates, ensemble, "calibration", device=device)
    member_rows = []
    for index in range(len(trained.members)):
        member = SpikingMap(replace(ensemble, seeds=ensemble.seeds[index : index + 1], neurons_per_member=None),
                            trained.members[index : index + 1], "calibration")
        readout = member.compile()
        member_rows.append({"member": index, "covered_places": float(readout.covered.float().mean()),
                            **_recalls(member.scores(query_rates, readout), truth)})
    rows = []
    for combination in COMBINATIONS:
        candidate = SpikingMap(replace(ensemble, combination=combination), trained.members, "calibration")
        rows.append({"combination": combination, **_recalls(candidate.scores(query_rates), truth)})
    best = best_row(rows)
    return replace(ensemble, combination=best["combination"]), member_rows + rows
