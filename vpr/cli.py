"""``spikebot vpr``: evaluate methods on place datasets, build and calibrate maps, benchmark, list and fetch datasets.

A thin shell: it parses options into typed configs and calls the core; it holds no algorithmic logic.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import click

from vpr.cnn_cli import train_gem, train_netvlad
from vpr.datasets import load_folder_dataset, load_registered, load_registry
from vpr.errors import SpikebotError
from vpr.evaluate import compute_distances, query_distances, score_run
from vpr.methods import METHODS, PlaceMethod, SNNEnsembleMethod, create_method
from vpr.report import markdown_table, plot_pr_curves, text_table, write_result
from vpr.sequence import SequenceConfig

SPIKING_METHODS = ("snn-ensemble", "snn-modular")


def _load_dataset(dataset, reference, query, ground_truth, tolerance, split, data_root):
    if dataset in load_registry():
        return load_registered(dataset, reference, query, data_root=data_root, split=split, tolerance=tolerance)
    folder = Path(dataset)
    if not folder.is_dir():
        raise click.BadParameter(
            f"{dataset!r} is neither a registered dataset ({', '.join(sorted(load_registry()))}) nor a folder",
            param_hint="--dataset",
        )
    if not reference or not query:
        raise click.UsageError("a folder dataset needs --reference and --query (sub-folders of it, or paths)")
    if split != "all":
        raise click.UsageError("--split applies to registered datasets only")
    return load_folder_dataset(
        folder / reference, folder / query, ground_truth_file=ground_truth, tolerance=tolerance or 0, name=folder.name
    )


def _make_method(name: str, config_file: str | None, map_dir: str | None, checkpoint_dir: str | None = None,
                 model_dir: str | None = None) -> PlaceMethod:
    """The method ``name``; spiking methods take an ensemble configuration file, a built map, a checkpoint folder;
    descriptor methods a trained model (NetVLAD, GeM) or vocabulary (DenseVLAD)."""
    method_type = METHODS[name]
    if map_dir is not None and not method_type.saves_maps:
        raise click.UsageError(f"--map applies to {', '.join(n for n, m in sorted(METHODS.items()) if m.saves_maps)}, not {name}")
    if name not in SPIKING_METHODS:
        if config_file:
            raise click.UsageError(f"--config applies to {' and '.join(SPIKING_METHODS)}, not {name}")
        changes = {"map_dir": map_dir} if map_dir is not None else {}
        if model_dir is not None:
            if method_type.model_field is None:
                raise click.UsageError(f"--model applies to {', '.join(n for n, m in sorted(METHODS.items()) if m.model_field)}, not {name}")
            changes[method_type.model_field] = model_dir
        return create_method(name, dataclasses.replace(method_type.config_type(), **changes))
    if model_dir is not None:
        raise click.UsageError(f"--model does not apply to {name}; spiking methods take --config and --map")
    config_type = METHODS[name].config_type
    config = config_type.from_file(config_file) if config_file else config_type()
    return create_method(name, dataclasses.replace(config, map_dir=map_dir, checkpoint_dir=checkpoint_dir))


def _run_guarded(function):
    """Turn the errors a user can fix into a one-line message and exit status 1, not a traceback."""
    try:
        return function()
    except (SpikebotError, KeyError, ValueError, OSError) as error:
        raise click.ClickException(str(error).strip("'\"")) from error


@click.group()
def vpr() -> None:
    """Visual place recognition."""


dataset_options = [
    click.option("--dataset", default="demo", show_default=True, help="Registered dataset name, or a folder holding traverse folders."),
    click.option("--reference", help="Reference traverse (registered name, or sub-folder/path for a folder dataset)."),
    click.option("--query", help="Query traverse."),
    click.option("--ground-truth", type=click.Path(dir_okay=False), help="Folder datasets: VPR-Bench .npy or query,reference CSV."),
    click.option("--tolerance", type=click.IntRange(min=0), help="Frames either side that count as a match (default: the dataset's)."),
    click.option("--split", type=click.Choice(["calibration", "test", "all"]), default="all", show_default=True),
    click.option("--data-root", type=click.Path(file_okay=False), help="Where datasets live (default: $SPIKEBOT_DATA, else datasets/)."),
]
method_options = [
    click.option("--method", type=click.Choice(sorted(METHODS)), default="sad", show_default=True),
    click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                 help="Spiking methods: ensemble configuration JSON (e.g. from `spikebot vpr calibrate`)."),
    click.option("--map", "map_dir", type=click.Path(file_okay=False), help="Spiking methods: a map built by `spikebot vpr build-map`."),
    click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
                 help="netvlad/gem: a model from `spikebot vpr train-netvlad`/`train-gem`; densevlad: a trained vocabulary."),
]


def with_options(options):
    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@vpr.command("eval")
@with_options(dataset_options)
@with_options(method_options)
@click.option("--seq-len", type=click.IntRange(min=1), default=1, show_default=True, help="Sequence length L (1 = single frame).")
@click.option("--seq-mode", type=click.Choice(["diagonal", "seqslam"]), default="diagonal", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs/eval", show_default=True, help="Where results go.")
def eval_command(dataset, reference, query, ground_truth, tolerance, split, data_root, method, config_file, map_dir, model_dir,
                 seq_len, seq_mode, out):
    """Evaluate METHOD on a dataset: prints a table, writes results.json/.md and plots to OUT."""

    def run():
        data = _load_dataset(dataset, reference, query, ground_truth, tolerance, split, data_root)
        place_method = _make_method(method, config_file, map_dir, model_dir=model_dir)
        result = score_run(compute_distances(data, place_method), SequenceConfig(length=seq_len, mode=seq_mode))
        summary = write_result(result, out)
        click.echo(text_table([summary]))
        click.echo(f"results written to {Path(out).resolve()}")

    _run_guarded(run)


@vpr.command("build-map")
@with_options(dataset_options)
@click.option("--method", type=click.Choice(sorted(name for name, m in METHODS.items() if m.saves_maps)), default="snn-ensemble", show_default=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="Spiking methods: ensemble configuration JSON.")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="netvlad/gem: a model from train-netvlad/train-gem; densevlad: a trained vocabulary.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for the map artefact.")
def build_map_command(dataset, reference, query, ground_truth, tolerance, split, data_root, method, config_file, model_dir, out):
    """Build a map of the reference traverse and save it to OUT; `eval --map OUT` then loads it.

    Spiking maps: finished members are kept in OUT/checkpoints until the map is saved, so running the same command
    again after an interrupt resumes. Descriptor maps: the model or vocabulary and the faiss index of the
    reference descriptors."""

    def run():
        data = _load_dataset(dataset, reference, query, ground_truth, tolerance, split, data_root)
        checkpoints = Path(out) / "checkpoints"
        spiking = method in SPIKING_METHODS
        place_method = _make_method(method, config_file, None, checkpoint_dir=str(checkpoints) if spiking else None,
                                    model_dir=model_dir)
        place_method.build_map(data.reference)
        place_method.save_map(out)
        shutil.rmtree(checkpoints, ignore_errors=True)
        if spiking:
            click.echo(json.dumps(place_method.map.statistics(), indent=2))
        click.echo(f"{place_method.name} map of {len(data.reference)} places ({place_method.map_bytes() / 2**20:.1f} MiB "
                   f"in memory) written to {Path(out).resolve()}")

    _run_guarded(run)


def _parse_inputs(context, parameter, values):
    """``WxH:PATCH`` strings -> per-pixel patch-normalised PreprocessConfigs."""
    from vpr.preprocess import PreprocessConfig

    parsed = []
    for value in values:
        try:
            size, patch = value.split(":")
            width, height = size.lower().split("x")
            parsed.append(PreprocessConfig(int(width), int(height), "pixel", int(patch)))
        except ValueError as error:
            raise click.BadParameter(f"{value!r}: expected WxH:PATCH such as 32x32:7 ({error})") from error
    return tuple(parsed)


@vpr.command("calibrate")
@click.option("--dataset", default="nordland_trimmed", show_default=True)
@click.option("--reference")
@click.option("--query")
@click.option("--tolerance", type=click.IntRange(min=0))
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="Starting ensemble configuration.")
@click.option("--input", "inputs", multiple=True, callback=_parse_inputs, metavar="WxH:PATCH",
              help="Candidate input, repeatable: image size and 7x7-style per-pixel patch size, e.g. 32x32:7 "
                   "(default: the starting configuration's input only).")
@click.option("--query-shift", "query_shifts", multiple=True, type=click.IntRange(min=0), metavar="PIXELS",
              help="Candidate query shift, repeatable: each query is also presented moved by up to PIXELS "
                   "(default: 0, 1 and 2).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="JSON file for the calibrated configuration.")
def calibrate_command(dataset, reference, query, tolerance, data_root, config_file, inputs, query_shifts, out):
    """Choose input, epochs, hyperactive threshold and readout on the CALIBRATION split (never the test split)."""
    from vpr.methods.snn import SNNMethodConfig
    from vpr.preprocess import preprocess
    from vpr.snn.calibration import CalibrationGrid, best_row, calibrate_combination, calibrate_inputs
    from vpr.snn.encoding import image_rates, query_rates

    def run():
        data = load_registered(dataset, reference, query, data_root=data_root, split="calibration", tolerance=tolerance)
        base = SNNMethodConfig.from_file(config_file) if config_file else SNNMethodConfig()
        network = base.ensemble.network
        images = [list(traverse) for traverse in (data.reference, data.query)]
        grid = CalibrationGrid(query_shifts=query_shifts) if query_shifts else CalibrationGrid()
        chosen, rows = calibrate_inputs(*images, data.ground_truth, network, inputs or (network.preprocess,), grid,
                                        device=base.device)
        ensemble, combination_rows = calibrate_combination(
            image_rates(preprocess(images[0], chosen.preprocess)), query_rates(images[1], chosen),
            data.ground_truth, dataclasses.replace(base.ensemble, network=chosen), device=base.device
        )
        record = {"ensemble": ensemble.to_dict(),
                  "calibration": {"dataset": dataset, "split": "calibration", "data": data.info, "rows": rows,
                                  "combination_rows": combination_rows}}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2) + "\n")
        best = best_row(rows)
        click.echo(f"calibration R@1 {best['recall_at_1']:.3f} with input {best['input']}, "
                   f"query_shift_px={chosen.query_shift_px}, epochs={chosen.epochs}, "
                   f"hyperactive_threshold={chosen.hyperactive_threshold}, assignment={chosen.assignment}, "
                   f"query_thresholds={chosen.query_thresholds}, place_readout={chosen.place_readout}, "
                   f"combination={ensemble.combination}; written to {out}")

    _run_guarded(run)


def _parse_protocol(text: str) -> tuple[str, str, str, str]:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise click.BadParameter(f"{text!r}: expected DATASET:REFERENCE:QUERY[:SPLIT]", param_hint="--protocol")
    return (*parts, "all") if len(parts) == 3 else tuple(parts)  # type: ignore[return-value]


DEFAULT_PROTOCOLS = (
    "gardens_point:day_right:night_right",
    "gardens_point:day_left:day_right",
    "nordland_trimmed:summer:winter:test",
)


@vpr.command("benchmark")
@click.option("--protocol", "protocols", multiple=True, default=DEFAULT_PROTOCOLS, show_default=True,
              help="DATASET:REFERENCE:QUERY[:SPLIT], repeatable.")
@click.option("--method", "methods", multiple=True, type=click.Choice(sorted(METHODS)), default=("sad",), show_default=True)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="Spiking methods' ensemble configuration.")
@click.option("--variant", "variants", multiple=True, metavar="METHOD=DIR",
              help="Also run METHOD with the trained model or vocabulary in DIR (e.g. netvlad=runs/netvlad-fine-tuned), repeatable.")
@click.option("--ablation", is_flag=True, help="Spiking ensembles: also read out the ablation rows from the same trained members.")
@click.option("--seq-len", "seq_lens", multiple=True, type=click.IntRange(min=1), default=(1, 5, 10), show_default=True)
@click.option("--seq-mode", type=click.Choice(["diagonal", "seqslam"]), default="diagonal", show_default=True)
@click.option("--tolerance", type=click.IntRange(min=0), help="Override every dataset's default tolerance.")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default="runs/benchmark", show_default=True)
def benchmark_command(protocols, methods, variants, config_file, ablation, seq_lens, seq_mode, tolerance, data_root, out):
    """Every METHOD (and VARIANT) on every PROTOCOL at every sequence length: one distance matrix each, one row per L."""
    entries = [(name, None) for name in methods]
    for variant in variants:
        name, _, model_dir = variant.partition("=")
        if name not in METHODS or not model_dir:
            raise click.BadParameter(f"{variant!r}: expected METHOD=DIR with METHOD one of {', '.join(sorted(METHODS))}",
                                     param_hint="--variant")
        entries.append((name, model_dir))

    def run():
        summaries = []
        for protocol in protocols:
            name, reference, query, split = _parse_protocol(protocol)
            data = load_registered(name, reference, query, data_root=data_root, split=split, tolerance=tolerance)
            protocol_dir = Path(out) / f"{name}-{reference}-{query}-{split}"
            by_length: dict[int, list] = {length: [] for length in seq_lens}
            for method_name, model_dir in entries:
                method = _make_method(method_name, config_file if method_name in SPIKING_METHODS else None, None,
                                      model_dir=model_dir)
                runs = [compute_distances(data, method)]
                if ablation and isinstance(method, SNNEnsembleMethod):
                    runs = [query_distances(data, variant, sum(variant.map.member_seconds)) for variant in method.ablations()]
                for map_run in runs:
                    for length in seq_lens:
                        result = score_run(map_run, SequenceConfig(length=length, mode=seq_mode))
                        label = map_run.method.name.replace(" ", "").replace(",", "-")
                        summaries.append(write_result(result, protocol_dir / label / f"L{length}"))
                        by_length[length].append((map_run.method.name, result.metrics))
                        click.echo(text_table(summaries[-1:]).splitlines()[-1])
            for length, curves in by_length.items():
                plot_pr_curves(curves, f"{name}: {reference} -> {query} ({split}), L={length}", protocol_dir / f"pr_curves-L{length}.png")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "benchmark.json").write_text(json.dumps(summaries, indent=2) + "\n")
        (Path(out) / "benchmark.md").write_text(markdown_table(summaries))
        click.echo("\n" + markdown_table(summaries))

    _run_guarded(run)


TRACK_ENV_OPTIONS = ("obs_size", "speed", "start", "odometry_noise", "wrong_penalty")


def _parse_env_options(context, parameter, values):
    """``KEY=VALUE`` strings -> RouteLocalization-v0 arguments; VALUE is read as JSON when it parses (``obs_size=[48,64]``,
    ``speed=1.2``), else as text (``start=random``)."""
    parsed = {}
    for value in values:
        key, separator, text = value.partition("=")
        if not separator or key not in TRACK_ENV_OPTIONS:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE with KEY one of {', '.join(TRACK_ENV_OPTIONS)} "
                                     "(the dataset, speed profile and step limit have their own options)")
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key] = text
        if key == "obs_size" and isinstance(parsed[key], list):
            parsed[key] = tuple(parsed[key])
    return parsed


def _parse_velocities(context, parameter, value):
    if value is None:
        return None
    try:
        low, high, steps = value.split(":")
        return float(low), float(high), int(steps)
    except ValueError as error:
        raise click.BadParameter(f"{value!r}: expected MIN:MAX:STEPS such as 0.4:1.6:13 ({error})") from error


@vpr.command("track")
@with_options(dataset_options)
@with_options(method_options)
@click.option("--seq-len", type=click.IntRange(min=1), default=10, show_default=True, help="Sequence length L of the online matcher.")
@click.option("--seq-mode", type=click.Choice(["diagonal", "seqslam", "odometry"]), default="diagonal", show_default=True,
              help="odometry: windows spaced by the places driven; needs --env-option odometry_noise=SIGMA.")
@click.option("--contrast-window", type=click.IntRange(min=0), default=10, show_default=True,
              help="seqslam: references in the local contrast-enhancement window (0: no enhancement).")
@click.option("--velocities", callback=_parse_velocities, metavar="MIN:MAX:STEPS",
              help="seqslam: the velocities searched, in reference places per step [default: 0.4:1.6:13, the range "
                   "of the varying speed profile].")
@click.option("--velocity-phases", type=click.IntRange(min=1), default=1, show_default=True,
              help="seqslam: phases searched per velocity, spread over [-0.5, 0.5) (1: SeqSLAM's single phase 0).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Confidence below which the agent says 'unsure' (0: always answers).")
@click.option("--speed-profile", type=click.Choice(["constant", "varying", "stops", "reversals", "random"]), default="random",
              show_default=True, help="How the robot drives; 'random' draws one per episode.")
@click.option("--episodes", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), help="Truncate episodes after this many steps (default: the route's end).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Episode i is reset with seed SEED + i.")
@click.option("--env-option", "env_options", multiple=True, callback=_parse_env_options, metavar="KEY=VALUE",
              help=f"Other environment arguments, repeatable: {', '.join(TRACK_ENV_OPTIONS)}.")
@click.option("--window", type=click.IntRange(min=1), default=20, show_default=True, help="Steps per accuracy-over-time window.")
@click.option("--out", type=click.Path(file_okay=False), default="runs/track", show_default=True)
def track_command(dataset, reference, query, ground_truth, tolerance, split, data_root, method, config_file, map_dir, model_dir,
                  seq_len, seq_mode, contrast_window, velocities, velocity_phases, threshold, speed_profile, episodes, max_steps, seed, env_options, window, out):
    """Drive EPISODES along the query traverse (spikebot/RouteLocalization-v0) with METHOD and an online sequence
    matcher as the agent: accuracy over time, precision at the threshold, latency per step; writes results.json and
    track.png (true vs estimated place) to OUT."""
    import gymnasium

    from vpr.agents import PlaceAgent
    from vpr.envs import ROUTE_LOCALIZATION
    from vpr.track import run_episodes, write_track

    if (velocities is not None or velocity_phases != 1) and seq_mode != "seqslam":
        raise click.UsageError("--velocities and --velocity-phases apply to --seq-mode seqslam")
    if seq_mode == "odometry" and env_options.get("odometry_noise") is None:
        raise click.UsageError("--seq-mode odometry needs odometry in the observations: --env-option odometry_noise=SIGMA")

    def run():
        data = _load_dataset(dataset, reference, query, ground_truth, tolerance, split, data_root)
        low, high, steps = velocities or (0.4, 1.6, 13)
        sequence = (SequenceConfig(seq_len, "seqslam", contrast_window=contrast_window, min_velocity=low,
                                   max_velocity=high, velocity_steps=steps, velocity_phases=velocity_phases)
                    if seq_mode == "seqslam" else SequenceConfig(seq_len, seq_mode))
        env = gymnasium.make(ROUTE_LOCALIZATION, dataset=data, speed_profile=speed_profile, max_episode_steps=max_steps,
                             **env_options)
        agent = PlaceAgent(_make_method(method, config_file, map_dir, model_dir=model_dir), sequence, threshold)
        agent.build_map(env.unwrapped.reference_frames())
        records = run_episodes(env, agent, episodes, seed)
        config = {"env": ROUTE_LOCALIZATION, "dataset": {"name": data.name, **data.info}, "agent": agent.describe(),
                  "speed_profile": speed_profile, "env_options": env_options, "episodes": episodes, "max_steps": max_steps,
                  "seed": seed, "obs_size": list(env.unwrapped.obs_size)}
        result = write_track(records, config, out, f"{agent.name} on {data.name}, {speed_profile} speed", window)
        metrics = result["metrics"]
        precision = "-" if metrics["precision"] is None else f"{metrics['precision']:.3f}"
        click.echo(f"{agent.name} on {data.name}, {episodes} episodes, {metrics['steps']} steps: accuracy "
                   f"{metrics['accuracy']:.3f}; precision {precision} at threshold {threshold} (coverage "
                   f"{metrics['coverage']:.3f}); latency p50 {metrics['latency_ms']['p50']:.2f} ms, p95 "
                   f"{metrics['latency_ms']['p95']:.2f} ms per step")
        for kind, row in metrics["by_speed_profile"].items():
            click.echo(f"    {kind}: accuracy {row['accuracy']:.3f} over {row['steps']} steps ({row['episodes']} episodes)")
        click.echo(f"results written to {Path(out).resolve()}")

    _run_guarded(run)


vpr.add_command(train_netvlad)
vpr.add_command(train_gem)


@vpr.command("datasets")
def datasets_command() -> None:
    """List the registered datasets, their traverses and where they come from."""
    for spec in load_registry().values():
        click.echo(f"{spec.name}: {spec.description}")
        click.echo(f"    traverses: {', '.join(spec.traverses)}; tolerance {spec.default_tolerance}; licence: {spec.licence}")


@vpr.command("fetch")
@click.argument("name")
@click.option("--data-root", type=click.Path(file_okay=False))
def fetch_command(name, data_root):
    """Download a registered dataset into the data root (needs internet)."""
    from vpr.datasets import get_spec
    from vpr.fetch import fetch_dataset

    _run_guarded(lambda: click.echo(f"{name} is in {fetch_dataset(get_spec(name), data_root)}"))
