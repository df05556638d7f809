"""The ceiling of a template readout on the spiking networks' input, next to SAD on the same input.

Each neuron of a trained module behaves like a template of its place read out by a normalised dot product with
the input rates. This computes that readout with every reference image as its own template (the best the
learned templates can do), the same with ON/OFF input channels (positive and negative parts of the normalised
image as two non-negative inputs each), and SAD on the same patch-normalised images, for each ``--input``
(default 28x28 with 7x7 patches). With several inputs it also scores every pair of them combined (their
template scores standardised per query and summed): what an ensemble whose members see different inputs could
reach. It also prints other comparisons a neuron could compute with the same template (L2 bias, cosine, centred
cosine, L2).

    SPIKEBOT_DATA=../shared/datasets .venv/bin/python benchmarks/template_ceiling.py --protocol nordland_trimmed:summer:winter:test
    SPIKEBOT_DATA=../shared/datasets .venv/bin/python benchmarks/template_ceiling.py \
        --protocol nordland_trimmed:summer:winter:calibration --input 28x28:7 --input 32x32:7 --input 64x32:7
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from scipy.spatial.distance import cdist

from vpr.datasets import load_registered
from vpr.metrics import recall_at_n
from vpr.preprocess import PreprocessConfig, preprocess
from vpr.snn.encoding import image_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="nordland_trimmed:summer:winter:test")
    parser.add_argument("--input", dest="inputs", action="append", metavar="WxH:PATCH",
                        help="input size and per-pixel patch size, repeatable (default 28x28:7)")
    args = parser.parse_args()
    name, reference, query, *split = args.protocol.split(":")
    data = load_registered(name, reference, query, split=split[0] if split else "all")
    images = [list(data.reference), list(data.query)]
    scores = {}
    for text in args.inputs or ["28x28:7"]:
        size, patch = text.split(":")
        width, height = (int(value) for value in size.lower().split("x"))
        config = PreprocessConfig(width, height, "pixel", int(patch))
        reference_images, query_images = (preprocess(t, config) for t in images)
        reference_rates, query_rates = image_rates(reference_images).numpy(), image_rates(query_images).numpy()
        reference_images, query_images = (i.reshape(len(i), -1) for i in (reference_images, query_images))
        scores[text] = template_scores(reference_rates, query_rates)
        ceiling = recall_at_n(-scores[text], data.ground_truth, (1,))[1]
        on_off = recall_at_n(-template_scores(on_off_rates(reference_images), on_off_rates(query_images)), data.ground_truth, (1,))[1]
        sad = recall_at_n(cdist(query_images, reference_images, "cityblock"), data.ground_truth, (1,))[1]
        print(f"{args.protocol} {text}: template ceiling R@1 {ceiling:.3f}, with ON/OFF inputs {on_off:.3f}, "
              f"SAD on the same input R@1 {sad:.3f}")
        others = {name: recall_at_n(-comparison, data.ground_truth, (1,))[1]
                  for name, comparison in other_comparisons(reference_rates, query_rates).items()}
        print(f"{args.protocol} {text}: other template comparisons R@1 "
              + ", ".join(f"{name} {recall:.3f}" for name, recall in others.items()))
    for first, second in itertools.combinations(scores, 2):
        combined = standardised(scores[first]) + standardised(scores[second])
        print(f"{args.protocol} {first} + {second}: combined template R@1 "
              f"{recall_at_n(-combined, data.ground_truth, (1,))[1]:.3f}")


def on_off_rates(images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.clip(images, 0, 1), np.clip(-images, 0, 1)], axis=1)


def template_scores(reference_rates: np.ndarray, query_rates: np.ndarray) -> np.ndarray:
    """(queries, references) dot products with each reference's rates normalised to sum 1."""
    return query_rates @ (reference_rates / reference_rates.sum(axis=1, keepdims=True)).T


def other_comparisons(reference_rates: np.ndarray, query_rates: np.ndarray) -> dict[str, np.ndarray]:
    """Similarity scores (higher = closer) of comparisons a neuron could compute instead of the dot product with
    its normalised template (78 = the learned weights' sum): with an L2 bias (-|w|^2 / 2s, as a per-neuron
    threshold offset would give), cosine, cosine of centred vectors, and the negative L2 distance."""
    weights = 78 * reference_rates / reference_rates.sum(axis=1, keepdims=True)
    centred = weights - weights.mean(axis=1, keepdims=True)
    scores = {f"L2 bias s={scale}": query_rates @ weights.T - (weights**2).sum(axis=1) / (2 * scale) for scale in (20, 78, 300)}
    scores["cosine"] = query_rates @ (weights / np.linalg.norm(weights, axis=1, keepdims=True)).T
    scores["centred cosine"] = query_rates @ (centred / np.linalg.norm(centred, axis=1, keepdims=True)).T
    scores["L2"] = -cdist(query_rates, reference_rates, "sqeuclidean")
    return scores


def standardised(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean(axis=1, keepdims=True)) / scores.std(axis=1, keepdims=True)


if __name__ == "__main__":
    main()
