"""Event cameras: one canonical event array, file readers, slicing and dense representations, and an ESIM-style
simulator of clips with known motion and ground-truth optical flow.

- :mod:`events.io`: ``EVENT_DTYPE``, ``read_events`` (AEDAT4, Prophesee EVT2/EVT3/DAT, Event Stream, N-MNIST,
  ``.npz``) into an ``EventRecording``, ``EventFileError``.
- :mod:`events.representations`: ``slice_by_time``, ``slice_by_count``, ``to_count_images``, ``to_voxel_grid``.
- :mod:`events.simulator`: ``esim_step`` / ``simulate_frames`` (the pixel model) and ``simulate_clip`` (a
  photograph under affine motion, events plus flow every 10 ms).
- :mod:`events.packing`: the compact binary event chunk of the service's event stream (delta-t, x, y, bit-packed
  polarity, optional zstd): ``encode_chunk``, ``decode_chunk``, ``ChunkError``.
- :mod:`events.flow`: temporally dense optical flow, one 10 ms OFF/ON count image per step: slim EV-FlowNet
  encoder-decoders in a ConvLSTM and a spiking variant (norse LIF with learned leak and threshold), a
  contrast-maximisation baseline, average endpoint error and >3 px outliers over pixels with events.
- :mod:`events.action`: the synthetic event-action set, SpikePoint and its PointNet++-style baseline.
- :mod:`events.cli`: ``spikebot events info | simulate | flow-data | flow-train | flow-eval | flow-show |
  action-data | action-train | action-eval``.

Importing the package loads nothing heavy; faery and OpenCV are imported where they are used.
"""
