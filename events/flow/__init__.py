"""Temporally dense optical flow from events: one 10 ms bin in, one flow field out, with recurrent memory.

- :mod:`events.flow.dataset`: simulated sequences (count images per bin, ground-truth flow, events) saved as
  checked sets, split into training and test sets by generation seed; training batches.
- :mod:`events.flow.models`: slim EV-FlowNet-style encoder-decoders, a ConvLSTM variant and a spiking variant
  (norse LIF neurons with learned leak and threshold).
- :mod:`events.flow.contrast_max`: the contrast-maximisation baseline (no learning).
- :mod:`events.flow.metrics`: average endpoint error and outlier rate over a mask.
- :mod:`events.flow.training`: training, saved models, evaluation of any set of estimators.
- :mod:`events.flow.visualise`: colour-wheel flow pictures.
- :mod:`events.flow.streaming`: the trained network stepped bin by bin on a live stream (downsampling, empty
  bins, coarse grid), for the service's event stream.
- :mod:`events.flow.cli`: ``spikebot events flow-data | flow-train | flow-eval | flow-show``.

Importing the package loads nothing heavy; torch and norse come with :mod:`events.flow.models`.
"""
