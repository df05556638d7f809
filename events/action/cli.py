"""``spikebot events action-data``, ``action-train`` and ``action-eval``: event-based action recognition on the
synthetic event-action set.

A thin shell: it parses options into typed configs, finds photographs and calls :mod:`events.action.dataset`
and :mod:`events.action.training`. Torch, norse and OpenCV are imported inside the commands, so registering
them costs the ``spikebot`` command nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from vpr.errors import SpikebotError

MODELS = ("spikepoint", "pointnet")
"""``events.action.models.MODELS``'s names, spelled out: importing the networks (torch, norse) would slow every
command."""
DEFAULT_DATA = Path("runs/events/action/data")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_PHOTOS = 24


def _guarded(function):
    try:
        return function()
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error


def _photographs(images: str) -> tuple[list | None, list[str]]:
    """``--images``: 'procedural', a folder of photographs, or 'auto' (GardensPoint frames under $SPIKEBOT_DATA
    when present, else procedural). At most MAX_PHOTOS photographs, evenly spread over the sorted folder."""
    from events.cli import PHOTO_FOLDER
    from events.simulator import load_photograph

    if images == "procedural":
        return None, []
    if images == "auto":
        if not os.environ.get("SPIKEBOT_DATA"):
            return None, []
        folder = Path(os.environ["SPIKEBOT_DATA"]).expanduser() / PHOTO_FOLDER
        if not folder.is_dir():
            return None, []
    else:
        folder = Path(images)
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        if images == "auto":
            return None, []
        raise click.BadParameter(f"{folder} holds no .jpg or .png photographs", param_hint="--images")
    chosen = [paths[i] for i in sorted({round(i * (len(paths) - 1) / max(MAX_PHOTOS - 1, 1))
                                        for i in range(min(MAX_PHOTOS, len(paths)))})]
    return [load_photograph(path) for path in chosen], [str(path) for path in chosen]


def _check_images(context, parameter, value: str) -> str:
    """Refuse a mistyped --images before minutes of work, not when the photographs are first needed."""
    if value not in ("auto", "procedural") and not Path(value).is_dir():
        raise click.BadParameter(f"{value} is not a folder (give a folder of photographs, 'procedural' or 'auto')")
    return value


def _images_option(function):
    return click.option(
        "--images", default="auto", show_default=True, callback=_check_images,
        help="Textures: 'auto' (GardensPoint photographs under $SPIKEBOT_DATA, else procedural), 'procedural', or a "
             "folder of photographs.")(function)


@click.command("action-data")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=str(DEFAULT_DATA), show_default=True,
              help="Folder for actions.npz and actions.json (reused when it holds this very set).")
@_images_option
@click.option("--train-seeds", type=click.IntRange(min=1), default=40, show_default=True,
              help="Training clips per class (generation seeds 0..N-1).")
@click.option("--test-seeds", type=click.IntRange(min=0), default=12, show_default=True,
              help="Held-out clips per class (generation seeds from --test-seed0).")
@click.option("--test-seed0", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--size", type=click.IntRange(min=16), default=64, show_default=True, help="Sensor width and height.")
@click.option("--duration-ms", type=float, default=1000.0, show_default=True, help="Length of each clip.")
def action_data(out_dir, images, train_seeds, test_seeds, test_seed0, size, duration_ms) -> None:
    """Generate the synthetic event-action set (8 motion classes, split by generation seed)."""

    def run() -> None:
        from events.action.dataset import ActionSetConfig, load_or_generate

        config = ActionSetConfig(height=size, width=size, duration_ms=duration_ms, train_seeds=train_seeds,
                                 test_seeds=test_seeds, test_seed0=test_seed0)
        photos, sources = _photographs(images)
        action_set = load_or_generate(config, out_dir, photos, sources, log=click.echo)
        click.echo(f"{len(action_set)} clips ({len(action_set.subset('train'))} train, "
                   f"{len(action_set.subset('test'))} test), {len(action_set.events)} events in {out_dir}")

    _guarded(run)


@click.command("action-train")
@click.option("--model", type=click.Choice(MODELS), required=True, help="SpikePoint or the PointNet++-style ANN.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder for the model.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=str(DEFAULT_DATA), show_default=True,
              help="A set from action-data; when the folder holds none, the default set is generated there.")
@_images_option
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--window-ms", type=float, default=500.0, show_default=True)
@click.option("--stride-ms", type=float, default=250.0, show_default=True)
@click.option("--points", "n_points", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Events sampled per window.")
@click.option("--centroids", type=click.IntRange(min=1), default=32, show_default=True, help="Groups per window.")
@click.option("--k", type=click.IntRange(min=1), default=16, show_default=True, help="Points per group.")
@click.option("--network", "network_json", default="{}", show_default=True,
              help='JSON overrides of the network\'s sizes, e.g. \'{"local_dim": 16}\'.')
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch CPU threads.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Evaluate on the held-out clips afterwards (eval.json in the model folder).")
def action_train(model, out_dir, data_dir, images, epochs, batch_size, lr, window_ms, stride_ms, n_points, centroids,
                 k, network_json, seed, threads, device, run_eval) -> None:
    """Train an event-action classifier (SpikePoint or the ANN baseline) on the training clips of a set."""

    def run() -> None:
        from events.action.dataset import (
            ActionSetConfig,
            load_action_set,
            load_or_generate,
        )
        from events.action.points import PointConfig
        from events.action.training import ActionTrainConfig, evaluate, train
        from spikebot.artefacts import file_sha256

        try:
            network = json.loads(network_json)
        except json.JSONDecodeError as error:
            raise click.BadParameter(f"not JSON: {error}", param_hint="--network") from error
        if not isinstance(network, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--network")
        points = PointConfig(window_ms=window_ms, stride_ms=stride_ms, n_points=n_points, n_centroids=centroids, k=k)
        config = ActionTrainConfig(model=model, network=network, points=points, epochs=epochs, batch_size=batch_size,
                                   lr=lr, seed=seed, torch_threads=threads, device=device)
        if (Path(data_dir) / "actions.json").is_file():
            action_set = load_action_set(data_dir)
        else:
            photos, sources = _photographs(images)
            action_set = load_or_generate(ActionSetConfig(), data_dir, photos, sources, log=click.echo)
        result = train(action_set, config, out_dir, file_sha256(Path(data_dir) / "actions.npz"), log=click.echo)
        click.echo(f"{model}: {result.metrics['parameters']} parameters, trained in {result.train_seconds:.0f} s "
                   f"-> {result.checkpoint}")
        if run_eval and len(action_set.subset("test")):
            report = evaluate(result.model, action_set, "test")
            report["data"] = str(data_dir)
            (Path(out_dir) / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
            _echo_report(report)

    _guarded(run)


@click.command("action-eval")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=str(DEFAULT_DATA), show_default=True,
              help="A data set folder written by action-train.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Draws the sampled points (and SpikePoint's rate codes).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch CPU threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def action_eval(model_dir, data_dir, split, seed, threads, as_json) -> None:
    """Accuracy, parameters and latency of a trained action model on a split of the action set."""

    def run() -> None:
        import torch

        from events.action.dataset import ActionSetConfig, load_action_set
        from events.action.training import ActionModel, evaluate

        torch.set_num_threads(threads)
        model, manifest = ActionModel.load(model_dir)
        action_set = load_action_set(data_dir)
        report = evaluate(model, action_set, split, seed)
        report["data"] = str(data_dir)
        trained_on = manifest.get("metadata", {}).get("dataset", {}).get("config")
        report["same_data_config_as_training"] = (trained_on is not None
                                                  and ActionSetConfig.from_dict(trained_on) == action_set.config)
        if as_json:
            click.echo(json.dumps(report, indent=2))
        else:
            _echo_report(report)
            if not report["same_data_config_as_training"]:
                click.echo("note: this data set's configuration differs from the one the model was trained on")

    _guarded(run)


def _echo_report(report: dict) -> None:
    click.echo(f"{report['model']} on {report['split']}: window accuracy {report['window_accuracy']:.1%} "
               f"({report['windows']} windows), clip accuracy {report['clip_accuracy']:.1%} ({report['clips']} clips), "
               f"{report['parameters']} parameters, {report['latency_ms_per_window']:.1f} ms per window")
    if "mean_firing_rate" in report:
        click.echo(f"mean firing rate {report['mean_firing_rate']:.3f} spikes per neuron and step")
