"""``spikebot events``: inspect event files and simulate event clips with ground-truth flow.

A thin shell: it parses options into typed configs, finds a photograph and calls the core; it holds no
algorithmic logic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import click
import numpy as np

from events.action.cli import action_data, action_eval, action_train
from events.flow.cli import COMMANDS as FLOW_COMMANDS
from events.io import FORMATS, EventRecording, read_events, write_events_npz
from events.simulator import ClipConfig, EsimConfig, load_photograph, simulate_clip
from vpr.errors import SpikebotError

PHOTO_FOLDER = Path("gardens_point") / "day_left"  # under $SPIKEBOT_DATA


def _run_guarded(function):
    """Turn the errors a user can fix into a one-line message and exit status 1, not a traceback."""
    try:
        return function()
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error


@click.group()
def events() -> None:
    """Event cameras: read event files, simulate events with ground-truth optical flow."""


events.add_command(action_data)
events.add_command(action_train)
events.add_command(action_eval)
for _command in FLOW_COMMANDS:
    events.add_command(_command)


@events.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Override detection from the extension/header.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(file: str, fmt: str | None, as_json: bool) -> None:
    """Format, sensor size, event count, duration and rate of an event FILE."""

    def run() -> None:
        started = time.perf_counter()
        recording = read_events(file, format=fmt)
        seconds = time.perf_counter() - started
        summary = recording.summary()
        summary["read_seconds"] = seconds
        summary["read_events_per_second"] = len(recording.events) / seconds if seconds > 0 else None
        for key in ("decoder", "dropped_outside_sensor", "reordered_events"):
            if key in recording.metadata:
                summary[key] = recording.metadata[key]
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        click.echo(f"file        {summary['source']}")
        decoder = f" ({summary['decoder']})" if summary.get("decoder") else ""
        click.echo(f"format      {summary['format']}{decoder}")
        click.echo(f"sensor      {summary['width']}x{summary['height']} ({summary['sensor_size_source']})")
        click.echo(f"events      {summary['events']}")
        if summary["events"]:
            click.echo(f"time        {summary['t_start_us']} .. {summary['t_end_us']} us "
                       f"({summary['duration_us'] / 1e6:.6f} s)")
            click.echo(f"rate        {summary['event_rate_hz']:.1f} events/s, ON fraction {summary['on_fraction']:.3f}")
        for key in ("dropped_outside_sensor", "reordered_events"):
            if key in summary:
                click.echo(f"warning     {key.replace('_', ' ')}: {summary[key]}")
        click.echo(f"read        {seconds * 1e3:.1f} ms")

    _run_guarded(run)


def _photograph(image: str | None, seed: int) -> tuple[np.ndarray | None, str]:
    """``--image``: a path, 'procedural', or 'auto' (a GardensPoint frame chosen by seed when $SPIKEBOT_DATA
    holds them, else the procedural texture)."""
    if image and image not in ("auto", "procedural"):
        if not Path(image).is_file():
            raise click.BadParameter(f"{image} is not a file (give a photograph, 'procedural' or 'auto')",
                                     param_hint="--image")
        return load_photograph(image), str(image)
    if image == "procedural" or not os.environ.get("SPIKEBOT_DATA"):
        return None, "procedural"
    folder = Path(os.environ["SPIKEBOT_DATA"]).expanduser() / PHOTO_FOLDER
    photos = sorted(folder.glob("Image*.jpg"))
    if not photos:
        return None, "procedural"
    chosen = photos[np.random.default_rng([seed, 3]).integers(len(photos))]
    return load_photograph(chosen), str(chosen)


@events.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the outputs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Draws the motion, photograph and noise.")
@click.option("--duration-ms", default=500.0, show_default=True, type=float)
@click.option("--height", default=128, show_default=True, type=int)
@click.option("--width", default=128, show_default=True, type=int)
@click.option("--image", default="auto", show_default=True,
              help="A photograph's path, 'procedural', or 'auto' (a GardensPoint frame from $SPIKEBOT_DATA).")
@click.option("--threshold", default=0.2, show_default=True, type=float, help="Contrast threshold C (ON and OFF).")
@click.option("--threshold-sigma", default=0.03, show_default=True, type=float)
@click.option("--refractory-us", default=100, show_default=True, type=int)
@click.option("--noise-rate-hz", default=0.0, show_default=True, type=float, help="Background events per pixel.")
@click.option("--max-speed", default=150.0, show_default=True, type=float, help="Largest translation, px/s.")
@click.option("--max-rotation", default=30.0, show_default=True, type=float, help="Largest rotation, deg/s.")
@click.option("--max-scale-rate", default=0.2, show_default=True, type=float, help="Largest |d log scale / dt|, 1/s.")
def simulate(out_dir, seed, duration_ms, height, width, image, threshold, threshold_sigma, refractory_us,
             noise_rate_hz, max_speed, max_rotation, max_scale_rate) -> None:
    """Simulate a clip of a photograph under known affine motion: events.npz, flow.npz and manifest.json."""

    def run() -> None:
        config = ClipConfig(
            height=height, width=width, duration_ms=duration_ms, seed=seed, max_speed_px_s=max_speed,
            max_rotation_deg_s=max_rotation, max_scale_rate=max_scale_rate,
            esim=EsimConfig(threshold_on=threshold, threshold_off=threshold, threshold_sigma=threshold_sigma,
                            refractory_us=refractory_us, noise_rate_hz=noise_rate_hz),
        )
        photo, source = _photograph(image, seed)
        started = time.perf_counter()
        clip = simulate_clip(config, photo, source_name=source)
        seconds = time.perf_counter() - started
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        recording = EventRecording(clip.events, width, height, "npz", metadata={"simulator": "spikebot ESIM",
                                                                                "seed": seed, "source": source})
        write_events_npz(out / "events.npz", recording)
        np.savez_compressed(out / "flow.npz", flow=clip.flow, t_us=clip.flow_t_us, valid=clip.valid,
                            interval_us=np.int64(config.flow_interval_us))
        manifest = {
            "config": dataclasses.asdict(config),
            "motion": dataclasses.asdict(clip.motion),
            "source_image": source,
            "events": int(len(clip.events)),
            "flow_frames": int(len(clip.flow)),
            "flow_units": f"pixels per {config.flow_interval_us} us, (dx, dy), from t_us to t_us + interval",
            "valid_fraction": float(clip.valid.mean()),
            "substeps": clip.substeps,
            "wall_seconds": seconds,
            "simulated_ms_per_wall_second": duration_ms / seconds if seconds > 0 else None,
            "files": {"events": "events.npz", "flow": "flow.npz"},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        click.echo(f"{len(clip.events)} events, {len(clip.flow)} flow frames from {source} -> {out} "
                   f"({seconds:.1f} s)")

    _run_guarded(run)
