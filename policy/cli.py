"""``spikebot policy``: manipulation policies: record expert demonstrations, train a diffusion policy, evaluate a
checkpoint, count its operations and spikes, plot success over training.

A thin shell: it parses options and calls :mod:`policy.demos`, :mod:`policy.workspace`, :mod:`policy.runner` and
:mod:`policy.plots`; it holds no logic of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from policy.demos import record_demos, save_demos
from policy.envs import EVAL_SEED0, TASKS

MODELS = ("stmdp", "transformer")
"""``policy.models.NETWORKS``'s names, spelled out: importing the networks (and norse) would slow every command."""
from vpr.errors import SpikebotError


@click.group()
def policy() -> None:
    """Manipulation policies on Metaworld tasks (state observations, no rendering)."""


@policy.command("demos")
@click.option("--task", type=click.Choice(list(TASKS)), required=True, help="Metaworld v3 task, easiest first.")
@click.option("--episodes", type=click.IntRange(min=1), default=100, show_default=True, help="Episodes to record.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the first episode; episode i runs on seed SEED + i.")
@click.option("--max-episode-steps", type=click.IntRange(1, 500), default=None,
              help="Step limit per episode [default: the task's, 500].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write NAME.npz and NAME.json [default: runs/policy/demos/TASK.npz].")
def demos_command(task, episodes, seed, max_episode_steps, out):
    """Record the scripted expert on TASK for EPISODES seeded episodes and save them (format spikebot-demos/1).

    Every episode is kept, with its success flag; training uses the successful ones.
    """
    out = Path(out) if out else Path("runs/policy/demos") / f"{task}.npz"
    try:
        demos = record_demos(task, episodes, seed, max_episode_steps=max_episode_steps)
        array_path, manifest_path = save_demos(demos, out)
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    successful = int(demos.success.sum())
    click.echo(
        f"{task}: {successful}/{demos.n_episodes} episodes successful ({demos.success_rate:.1%}), "
        f"{demos.n_steps} steps in {demos.seconds:.1f} s ({demos.n_steps / max(demos.seconds, 1e-9):.0f} steps/s)"
    )
    click.echo(f"written {array_path} and {manifest_path}")


@policy.command("train")
@click.option("--task", type=click.Choice(list(TASKS)), required=True, help="Metaworld v3 task.")
@click.option("--model", type=click.Choice(MODELS), required=True,
              help="Noise-prediction network: the spiking STMDP or the transformer baseline.")
@click.option("--demos", "demos_path", type=click.Path(dir_okay=False), default=None,
              help="Demonstrations (spikebot-demos/1) [default: record --demo-episodes into the run folder].")
@click.option("--demo-episodes", type=click.IntRange(min=1), default=50, show_default=True,
              help="Expert episodes to record when --demos is not given (seeds 0..N-1).")
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True, help="Training steps (the budget).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True,
              help="Peak learning rate (runs saved with another one resume only with it given).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-3, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=100, show_default=True, help="Linear lr warm-up.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Act and save with the EMA of the weights.")
@click.option("--eval-every", type=click.IntRange(min=0), default=500, show_default=True,
              help="Evaluate every N steps (0: only at the end).")
@click.option("--eval-episodes", type=click.IntRange(min=0), default=10, show_default=True,
              help="Episodes per evaluation, seeds from 1,000,000 (0: no evaluation).")
@click.option("--eval-max-episode-steps", type=click.IntRange(1, 500), default=None,
              help="Step limit of evaluation episodes [default: the task's, 500].")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--network", "network_json", default="{}", show_default=True,
              help='Network overrides as JSON, e.g. \'{"embed_dim": 64, "n_layers": 2}\' or '
                   '\'{"direct_obs_conditioning": false}\' (the design before it, and to resume runs saved before it).')
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads [default: torch's].")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: runs/policy/TASK-MODEL].")
@click.option("--resume/--no-resume", default=None,
              help="Require a checkpoint to resume / refuse a folder that has one [default: resume when there is one].")
def train_command(task, model, demos_path, demo_episodes, steps, batch_size, lr, weight_decay, warmup_steps, ema,
                  eval_every, eval_episodes, eval_max_episode_steps, checkpoint_every, network_json, seed, device,
                  threads, run_dir, resume):
    """Train a diffusion policy for TASK with MODEL; checkpoints, config.json and metrics.json go to the run folder.

    Running it again on the same run folder continues from the latest checkpoint (optimiser, EMA, step and RNG
    state); a larger --steps extends the run.
    """
    from policy.workspace import TrainConfig, train

    run_dir = Path(run_dir) if run_dir else Path("runs/policy") / f"{task}-{model}"
    try:
        network = json.loads(network_json)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--network") from error
    if not isinstance(network, dict):
        raise click.BadParameter("expected a JSON object", param_hint="--network")
    try:
        config = TrainConfig(task=task, model=model, demos=demos_path, demo_episodes=demo_episodes, steps=steps,
                             batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_warmup_steps=warmup_steps,
                             ema=ema, network=network, eval_every=eval_every, eval_episodes=eval_episodes,
                             eval_batch=max(eval_episodes, 1), eval_max_episode_steps=eval_max_episode_steps,
                             checkpoint_every=checkpoint_every, seed=seed, device=device, torch_threads=threads)
        result = train(config, run_dir, resume=resume, log=click.echo)
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    losses = result.metrics["loss"]
    tail = losses[-min(50, len(losses)):]
    click.echo(f"{task} {model}: step {result.step} (from {result.start_step}), loss {sum(tail) / len(tail):.4f} "
               f"(mean of the last {len(tail)}), {result.train_seconds:.1f} s of training")
    evaluations = result.metrics["eval"]
    if evaluations:
        last = evaluations[-1]
        click.echo(f"success {last['success_rate']:.1%} over {last['episodes']} episodes at step {last['step']}")
    click.echo(f"checkpoint {result.checkpoint}")


@policy.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="A checkpoint folder (policy.json), or a run folder (its latest checkpoint).")
@click.option("--episodes", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seed0", type=click.IntRange(min=0), default=EVAL_SEED0, show_default=True,
              help="Seed of the first episode; episode i runs on SEED0 + i.")
@click.option("--task", type=click.Choice(list(TASKS)), default=None, help="[default: the task it was trained on]")
@click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)
@click.option("--inference-steps", type=click.IntRange(min=1), default=10, show_default=True, help="DDIM steps.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Episodes run in lockstep, one predict call each chunk (latency is then per batch).")
@click.option("--max-episode-steps", type=click.IntRange(1, 500), default=None, help="[default: the task's, 500]")
@click.option("--device", default=None, help="[default: CUDA when available, else CPU]")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads [default: torch's].")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the metrics as JSON here.")
def eval_command(checkpoint, episodes, seed0, task, sampler, inference_steps, batch, max_episode_steps, device,
                 threads, out):
    """Evaluate a trained policy on seeded episodes: success rate, mean episode length, latency per action chunk."""
    import torch

    from policy.diffusion import DiffusionPolicy
    from policy.runner import evaluate
    from policy.workspace import checkpoint_metadata, resolve_checkpoint

    if threads:
        torch.set_num_threads(threads)
    try:
        folder = resolve_checkpoint(checkpoint)
        policy_ = DiffusionPolicy.load(folder, device=device)
        metadata = checkpoint_metadata(folder)
        task = task or metadata.get("task")
        if task is None:
            raise click.UsageError(f"{folder} does not say which task it was trained on: pass --task")
        result = evaluate(policy_, task, episodes, seed0=seed0, sampler=sampler, inference_steps=inference_steps,
                          batch=batch, max_episode_steps=max_episode_steps)
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    document = {"checkpoint": str(folder), "model": metadata.get("model"), "step": metadata.get("step"),
                "device": str(policy_.device), "threads": torch.get_num_threads(), **result.to_dict()}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(document, indent=2) + "\n")
    steps = "" if sampler == "ddpm" else f"-{inference_steps}"
    click.echo(f"{task} {metadata.get('model')} step {metadata.get('step')}, {sampler.upper()}{steps}: success "
               f"{result.success_rate:.1%} ({sum(result.success)}/{episodes}, seeds {seed0}..{seed0 + episodes - 1}), "
               f"mean length {result.mean_length:.1f} steps, latency {result.latency_ms_mean:.1f} ms per chunk "
               f"(median {result.latency_ms_median:.1f}, p95 {result.latency_ms_p95:.1f}; batch {batch}, {policy_.device})")
    if out:
        click.echo(f"written {out}")


@policy.command("cost")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A checkpoint or run folder; repeat to compare (e.g. STMDP and the transformer baseline).")
@click.option("--demos", "demos_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Demonstrations to draw observation histories from [default: the ones each checkpoint trained on].")
@click.option("--samples", type=click.IntRange(min=1), default=32, show_default=True,
              help="Observation histories (seeded draw from the demonstrations' windows).")
@click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)
@click.option("--inference-steps", type=click.IntRange(min=1), default=10, show_default=True, help="DDIM steps.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draw and the noise.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the costs as JSON here.")
def cost_command(checkpoints, demos_path, samples, sampler, inference_steps, seed, out):
    """Operations per action chunk: multiply-accumulates, and for a spiking network its spikes, firing rate per
    layer and synaptic operations, with a 45 nm energy estimate (policy.models.cost explains the counting)."""
    import torch

    from policy.diffusion import DiffusionPolicy
    from policy.workspace import (
        checkpoint_metadata,
        demonstration_histories,
        resolve_checkpoint,
    )

    documents = []
    try:
        for checkpoint in checkpoints:
            folder = resolve_checkpoint(checkpoint)
            policy_ = DiffusionPolicy.load(folder, device="cpu")
            metadata = checkpoint_metadata(folder)
            histories, source = demonstration_histories(folder, policy_, samples, seed, demos_path)
            cost = policy_.inference_cost(histories, sampler, inference_steps, torch.Generator().manual_seed(seed))
            documents.append({"checkpoint": str(folder), "model": metadata.get("model"), "task": metadata.get("task"),
                              "step": metadata.get("step"), "demos": str(source), "samples": len(histories),
                              "sampler": sampler, **cost.to_dict()})
    except (SpikebotError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    for document in documents:
        passes = document["passes"]
        click.echo(f"{document['checkpoint']} ({document['model']}, {document['task']}, step {document['step']}), "
                   f"{sampler.upper()} {passes} passes, {document['samples']} observation histories:")
        click.echo(f"  per pass: {document['macs_per_pass'] / 1e6:.3f} M MACs, {document['sops_per_pass'] / 1e6:.3f} M "
                   f"SOPs (run densely: {document['dense_macs_per_pass'] / 1e6:.3f} M MACs); per chunk "
                   f"{document['energy_uj']:.1f} uJ estimated")
        activity = document["activity"]
        if activity:
            click.echo(f"  spikes per pass {activity['spikes_per_pass']:.0f} (per chunk "
                       f"{activity['spikes_per_pass'] * passes:.0f}), mean firing rate {activity['mean_firing_rate']:.1%}")
            for layer in activity["layers"]:
                click.echo(f"    {layer['name']:<40} {layer['neurons']:>6} neurons x {layer['time_steps']} steps  "
                           f"rate {layer['firing_rate']:6.1%}  spikes {layer['spikes_per_pass']:9.0f}  "
                           f"SOPs {layer['sops_per_pass'] / 1e3:9.1f} k")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(documents, indent=2) + "\n")
        click.echo(f"written {out}")


@policy.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default="runs/policy/success.png", show_default=True)
def plot_command(run_dirs, out):
    """Plot success over training of RUN_DIRS (one panel per task, one line per model) as a PNG."""
    from policy.plots import plot_success

    try:
        path = plot_success(list(run_dirs), out)
    except (ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"written {path}")
