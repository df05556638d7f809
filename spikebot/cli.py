"""The ``spikebot`` command: one group per capability (``spikebot vpr ...``)."""

from __future__ import annotations

import click

from events.cli import events
from policy.cli import policy
from server.cli import serve
from spikebot.provenance import __version__
from vpr.cli import vpr


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spikebot")
def main() -> None:
    """spikebot: neuromorphic place recognition, policies and event-camera processing."""


main.add_command(vpr)
main.add_command(policy)
main.add_command(serve)
main.add_command(events)
