"""``spikebot events flow-data | flow-train | flow-eval | flow-show``: temporally dense optical flow.

A thin shell: it parses options into typed configs, finds photographs and event files, and calls
:mod:`events.flow.dataset`, :mod:`events.flow.training` and :mod:`events.flow.visualise`. The commands are
attached to the ``spikebot events`` group in :mod:`events.cli`. torch and norse are imported inside the commands
that use them, so that ``spikebot --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import numpy as np

from events.simulator import ClipConfig, EsimConfig
from vpr.errors import SpikebotError

KINDS = ("lstm", "spiking")  # events.flow.models.KINDS, spelled out so that --help does not import torch


def _guarded(function):
    """Turn the errors a user can fix into a one-line message and exit status 1, not a traceback."""
    try:
        return function()
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error


def _seed_range(text: str) -> list[int]:
    """``A:B`` (B excluded) or a comma-separated list, into generation seeds."""
    try:
        if ":" in text:
            start, stop = (int(part) for part in text.split(":"))
            seeds = list(range(start, stop))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: give START:STOP or a comma-separated list of integers",
                                 param_hint="--seeds") from None
    if not seeds:
        raise click.BadParameter(f"{text!r} names no seeds", param_hint="--seeds")
    return seeds


@click.command("flow-data")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the set.")
@click.option("--seeds", required=True, help="Generation seeds, START:STOP (stop excluded) or a list: 0:48.")
@click.option("--duration-ms", default=300.0, show_default=True, type=float, help="Length of every sequence.")
@click.option("--height", default=128, show_default=True, type=int)
@click.option("--width", default=128, show_default=True, type=int)
@click.option("--image", default="auto", show_default=True,
              help="'procedural', or 'auto' (a GardensPoint frame per seed from $SPIKEBOT_DATA, as "
                   "'spikebot events simulate').")
@click.option("--max-speed", default=400.0, show_default=True, type=float,
              help="Largest translation, px/s (400: up to 4 px per 10 ms bin).")
@click.option("--max-rotation", default=30.0, show_default=True, type=float, help="Largest rotation, deg/s.")
@click.option("--max-scale-rate", default=0.2, show_default=True, type=float, help="Largest |d log scale / dt|, 1/s.")
@click.option("--noise-rate-hz", default=0.1, show_default=True, type=float, help="Background events per pixel.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes simulating sequences at once (the set is the same for any number).")
def flow_data(out_dir, seeds, duration_ms, height, width, image, max_speed, max_rotation, max_scale_rate,
              noise_rate_hz, workers) -> None:
    """Simulate a set of flow sequences (events, 10 ms count images, ground-truth flow) from generation SEEDS.

    Keep training and test seeds apart: flow-eval refuses a model trained on any of the test set's seeds.
    """
    if image not in ("auto", "procedural"):
        raise click.BadParameter("give 'auto' or 'procedural'", param_hint="--image")
    seed_list = _seed_range(seeds)

    def run() -> None:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        from events.flow.dataset import SequenceSet, save_set
        from spikebot.progress import progress

        clip = ClipConfig(height=height, width=width, duration_ms=duration_ms, max_speed_px_s=max_speed,
                          max_rotation_deg_s=max_rotation, max_scale_rate=max_scale_rate,
                          esim=EsimConfig(noise_rate_hz=noise_rate_hz))
        simulate = partial(_simulate_seed, clip, image)
        if workers == 1:
            sequences = [simulate(seed) for seed in progress(seed_list, desc="simulate")]
        else:
            with ProcessPoolExecutor(min(workers, len(seed_list))) as pool:
                sequences = list(progress(pool.map(simulate, seed_list), desc="simulate", total=len(seed_list)))
        save_set(SequenceSet(clip, tuple(sequences)), out_dir)
        events = sum(len(s.events) for s in sequences)
        click.echo(f"{len(sequences)} sequences, {len(sequences[0].counts)} bins each, {events} events -> {out_dir}")

    _guarded(run)


def _simulate_seed(clip: ClipConfig, image: str, seed: int):
    """One sequence of a flow set (module level, so that worker processes can run it)."""
    from events.cli import _photograph  # the same photograph per seed as 'spikebot events simulate'
    from events.flow.dataset import simulate_sequence

    photo, source = _photograph(image, seed)
    return simulate_sequence(dataclasses.replace(clip, seed=seed), photo, source)


@click.command("flow-train")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="A set from flow-data.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the model.")
@click.option("--model", "kind", required=True, type=click.Choice(KINDS), help="Recurrent unit: ConvLSTM or LIF.")
@click.option("--channels", default="8,16,32", show_default=True, help="Channels per encoder level.")
@click.option("--residual-blocks", default=1, show_default=True, type=int)
@click.option("--network", "network_json", default="{}", show_default=True,
              help="JSON of further network settings (events.flow.models.FlowNetConfig), e.g. "
                   "'{\"surrogate\": \"tanh\", \"surrogate_alpha\": 5}'.")
@click.option("--steps", default=500, show_default=True, type=int)
@click.option("--batch", default=8, show_default=True, type=int)
@click.option("--bins", default=8, show_default=True, type=int, help="10 ms bins per window (BPTT length).")
@click.option("--crop", default=64, show_default=True, type=int, help="Side of the random training crops (px).")
@click.option("--warmup-bins", default=0, show_default=True, type=int,
              help="Bins run without gradients before each window, so that training starts from a warm state.")
@click.option("--lr", "learning_rate", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=int, help="torch threads.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda or cuda:N.")
def flow_train(data, out_dir, kind, channels, residual_blocks, network_json, steps, batch, bins, crop, learning_rate,
               seed, threads, device, warmup_bins) -> None:
    """Train a temporally dense flow network (one 10 ms bin per step) on a simulated set; save it to OUT."""
    try:
        channel_sizes = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise click.BadParameter(f"{channels!r}: give comma-separated integers", param_hint="--channels") from None
    try:
        network_settings = json.loads(network_json)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--network") from None
    if not isinstance(network_settings, dict) or {"kind", "channels", "residual_blocks"} & set(network_settings):
        raise click.BadParameter("give a JSON object without kind, channels or residual_blocks (they have options "
                                 "of their own)", param_hint="--network")

    def run() -> None:
        from events.flow.dataset import load_set
        from events.flow.models import FlowNetConfig
        from events.flow.training import FlowTrainConfig, train

        try:
            network = FlowNetConfig(kind=kind, channels=channel_sizes, residual_blocks=residual_blocks,
                                    **network_settings)
        except TypeError as error:
            raise click.BadParameter(str(error), param_hint="--network") from None
        config = FlowTrainConfig(network=network, steps=steps, batch=batch, bins=bins, crop=crop,
                                 learning_rate=learning_rate, seed=seed, torch_threads=threads, device=device,
                                 warmup_bins=warmup_bins)
        train_set = load_set(data)

        def report(step: int, loss: float) -> None:
            if (step + 1) % max(1, steps // 10) == 0:
                click.echo(f"step {step + 1}/{steps} loss {loss:.4f}")

        model = train(config, train_set, report)
        model.history["data"] = str(data)
        model.history["data_sha256"] = json.loads((Path(data) / "sequences.json").read_text())["sequences_sha256"]
        model.save(out_dir)
        click.echo(f"{kind}: {sum(p.numel() for p in model.network.parameters())} parameters, "
                   f"{model.history['train_seconds']:.0f} s -> {out_dir}")

    _guarded(run)


@click.command("flow-eval")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="A held-out set from flow-data.")
@click.option("--model", "models", multiple=True, type=click.Path(file_okay=False),
              help="A model folder from flow-train (repeatable).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also score zero flow and contrast maximisation.")
@click.option("--cm-window-bins", default=3, show_default=True, type=int,
              help="Contrast maximisation: bins of events per estimate (the bin and those before it).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--threads", default=1, show_default=True, type=int, help="torch threads.")
def flow_eval(data, models, baselines, cm_window_bins, out_file, threads) -> None:
    """Score flow estimators on held-out simulated sequences: AEE and outliers (>3 px) over pixels with events."""
    if not models and not baselines:
        raise click.UsageError("nothing to score: give --model or keep --baselines")

    def run() -> None:
        import torch

        from events.flow.contrast_max import ContrastMaxConfig
        from events.flow.dataset import load_set
        from events.flow.models import parameter_count
        from events.flow.training import (
            FlowModel,
            check_held_out,
            contrast_max_estimator,
            evaluate,
            network_estimator,
            zero_flow,
        )

        torch.set_num_threads(threads)
        test_set = load_set(data)
        estimators, parameters = {}, {}
        if baselines:
            estimators["zero flow"] = zero_flow
            estimators["contrast maximisation"] = contrast_max_estimator(ContrastMaxConfig(window_bins=cm_window_bins))
            parameters = {"zero flow": 0, "contrast maximisation": 0}
        for folder in models:
            model = FlowModel.load(folder)
            check_held_out(model, test_set)
            name = f"{model.network.config.kind} ({Path(folder).name})"
            estimators[name] = network_estimator(model.network)
            parameters[name] = parameter_count(model.network)
        results = evaluate(estimators, test_set)
        click.echo(f"{len(test_set.sequences)} held-out sequences (seeds {test_set.seeds[0]}..{test_set.seeds[-1]}); "
                   "errors over valid pixels with events in the bin")
        click.echo(f"{'method':32s} {'params':>8s} {'AEE px':>8s} {'>3px %':>8s} {'ms/bin':>8s}")
        for name, row in results.items():
            row["parameters"] = parameters[name]
            click.echo(f"{name:32s} {row['parameters']:8d} {row['aee']:8.3f} {row['outlier_percent']:8.2f} "
                       f"{row['seconds_per_bin'] * 1e3:8.2f}")
        if out_file:
            report = {"data": str(data), "seeds": test_set.seeds, "cm_window_bins": cm_window_bins,
                      "threads": threads, "results": results}
            Path(out_file).parent.mkdir(parents=True, exist_ok=True)
            Path(out_file).write_text(json.dumps(report, indent=2) + "\n")

    _guarded(run)


@click.command("flow-show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", "model_dir", type=click.Path(file_okay=False),
              help="A model folder from flow-train [default: contrast maximisation].")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--start-ms", default=0.0, show_default=True, type=float, help="From the first event.")
@click.option("--duration-ms", default=100.0, show_default=True, type=float, help="Bins run through (10 ms each).")
@click.option("--panels", default=4, show_default=True, type=int, help="Bins shown, evenly spaced, the last included.")
def flow_show(file, model_dir, out_file, start_ms, duration_ms, panels) -> None:
    """Draw the estimated flow of a real event FILE (colour wheel: hue = direction, brightness = speed) as a PNG."""
    if duration_ms < 10 or panels < 1:
        raise click.BadParameter("need --duration-ms >= 10 and --panels >= 1")

    def run() -> None:
        from events.flow.contrast_max import contrast_max_flow
        from events.flow.visualise import render_flow_panels
        from events.io import read_events
        from events.representations import to_count_images

        recording = read_events(file)
        if not len(recording.events):
            raise ValueError(f"{file} holds no events")
        interval = 10_000
        t0 = int(recording.events["t"][0] + start_ms * 1000)
        bins = int(duration_ms * 1000 // interval)
        counts = to_count_images(recording.events, recording.height, recording.width, interval, t0, bins)
        shown = np.unique(np.linspace(bins - 1, 0, panels).round().astype(int))
        if model_dir:
            from events.flow.training import FlowModel, predict_sequence

            model = FlowModel.load(model_dir)
            flows = predict_sequence(model.network, counts)[shown]
            method = f"{model.network.config.kind} network ({Path(model_dir).name})"
        else:
            flows = np.stack([contrast_max_flow(recording.events, t0 + k * interval, interval, recording.height,
                                                recording.width) for k in shown])
            method = "contrast maximisation"
        times = [(k * interval) / 1000 + start_ms for k in shown]
        render_flow_panels(counts[shown], flows, times, out_file, f"{Path(file).name}: {method}")
        click.echo(f"{len(shown)} bins of {recording.width}x{recording.height} -> {out_file}")

    _guarded(run)


COMMANDS = (flow_data, flow_train, flow_eval, flow_show)
