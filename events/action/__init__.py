"""Event-based action recognition with point clouds (issue 7): SpikePoint and a PointNet++-style ANN baseline.

- :mod:`events.action.dataset`: a labelled event-action set generated with :mod:`events.simulator` (8 motion
  classes of a textured object over a static background, nuisance speed, position, size, threshold and noise;
  train/test split by generation seed), saved and loaded checked (``spikebot-event-actions/1``).
- :mod:`events.action.points`: sliding windows, point sampling, farthest-point sampling + kNN grouping, the
  sign-split relative coordinates and their rate code.
- :mod:`events.action.models`: ``SpikePoint`` (LIF neurons, identity-mapping residuals, T = 16) and
  ``PointNetClassifier``, chosen by name.
- :mod:`events.action.training`: ``ActionTrainConfig``, ``train``, ``evaluate`` and the saved ``ActionModel``
  (``spikebot-action-model/1``).
- :mod:`events.action.streaming`: sliding windows of a live stream classified with the model's own
  preprocessing, for the service's event stream.
- :mod:`events.action.cli`: ``spikebot events action-data``, ``action-train`` and ``action-eval``.

Importing the package loads nothing heavy; torch and norse come with the models and training modules.
"""
