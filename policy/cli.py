"""``spikebot policy``: manipulation policies; for now, recording expert demonstrations.

A thin shell: it parses options and calls :mod:`policy.demos`; it holds no logic of its own.
"""

from __future__ import annotations

from pathlib import Path

import click

from policy.demos import record_demos, save_demos
from policy.envs import TASKS
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
