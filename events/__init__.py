"""Event-camera I/O, dense optical flow and point-based SNN action recognition (not yet implemented: see issue 7)."""
