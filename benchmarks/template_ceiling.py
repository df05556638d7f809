"""The ceiling of a template readout on the spiking networks' input, next to SAD on the same input.

Each neuron of a trained module behaves like a template of its place read out by a normalised dot product with
the input rates. This computes that readout with every reference image as its own template (the best the
learned templates can do), the same with ON/OFF input channels (positive and negative parts of the normalised
image as two non-negative inputs each), and SAD on the same 28x28 patch-normalised images.

    SPIKEBOT_DATA=../shared/datasets .venv/bin/python benchmarks/template_ceiling.py --protocol nordland_trimmed:summer:winter:test
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.spatial.distance import cdist

from vpr.datasets import load_registered
from vpr.metrics import recall_at_n
from vpr.preprocess import preprocess
from vpr.snn.config import NetworkConfig
from vpr.snn.encoding import image_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="nordland_trimmed:summer:winter:test")
    args = parser.parse_args()
    name, reference, query, *split = args.protocol.split(":")
    data = load_registered(name, reference, query, split=split[0] if split else "all")
    config = NetworkConfig().preprocess
    reference_images, query_images = (preprocess(t, config).reshape(len(t), -1) for t in (data.reference, data.query))
    reference_rates, query_rates = image_rates(reference_images).numpy(), image_rates(query_images).numpy()
    ceiling = template_recall(reference_rates, query_rates, data.ground_truth)
    on_off = template_recall(on_off_rates(reference_images), on_off_rates(query_images), data.ground_truth)
    sad = recall_at_n(cdist(query_images, reference_images, "cityblock"), data.ground_truth, (1,))[1]
    print(f"{args.protocol}: template ceiling R@1 {ceiling:.3f}, with ON/OFF inputs {on_off:.3f}, "
          f"SAD on the same input R@1 {sad:.3f}")


def on_off_rates(images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.clip(images, 0, 1), np.clip(-images, 0, 1)], axis=1)


def template_recall(reference_rates: np.ndarray, query_rates: np.ndarray, truth) -> float:
    templates = reference_rates / reference_rates.sum(axis=1, keepdims=True)
    return recall_at_n(-(query_rates @ templates.T), truth, (1,))[1]


if __name__ == "__main__":
    main()
