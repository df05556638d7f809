"""``python -m events ...``: the ``spikebot events`` commands without the rest of the CLI's imports (the service,
the policy and place recognition), for machines that only train and score event models."""

from events.cli import events

events(prog_name="python -m events")
