"""Event cameras: one canonical event array, file readers, slicing and dense representations, and an ESIM-style
simulator of clips with known motion and ground-truth optical flow.

- :mod:`events.io`: ``EVENT_DTYPE``, ``read_events`` (AEDAT4, Prophesee EVT2/EVT3/DAT, Event Stream, N-MNIST,
  ``.npz``) into an ``EventRecording``, ``EventFileError``.
- :mod:`events.representations`: ``slice_by_time``, ``slice_by_count``, ``to_count_images``, ``to_voxel_grid``.
- :mod:`events.simulator`: ``esim_step`` / ``simulate_frames`` (the pixel model) and ``simulate_clip`` (a
  photograph under affine motion, events plus flow every 10 ms).
- :mod:`events.cli`: ``spikebot events info`` and ``spikebot events simulate``.

Importing the package loads nothing heavy; faery and OpenCV are imported where they are used.
"""
