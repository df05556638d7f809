"""spikebot: the distribution's shared pieces (version, provenance) and the root command line.

Each capability lives in its own top-level package (``vpr``, ``policy``, ``events``, ``server``);
this package only ties them together.
"""

from spikebot.provenance import __version__, git_commit

__all__ = ["__version__", "git_commit"]
