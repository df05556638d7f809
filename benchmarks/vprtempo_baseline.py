"""VPRTempo (Hines et al., ICRA 2024; PyPI ``vprtempo`` 1.1.10) as a baseline on spikebot's exact splits.

    bash benchmarks/vprtempo_env.sh
    SPIKEBOT_DATA=../shared/datasets PYTHONPATH=.bench-envs/vprtempo .venv/bin/python \
        benchmarks/vprtempo_baseline.py --protocol nordland_trimmed:summer:winter:test --out runs/vprtempo

VPRTempo is not a spikebot dependency: it lives in ``.bench-envs/vprtempo`` (see ``vprtempo_env.sh``) and is
imported only here. Frames, split and ground truth come from ``vpr.datasets.load_registered``; VPRTempo trains on
the reference frames (staged as symlinks + the CSV its ``CustomImageDataset`` reads) with its own defaults, its
output for every query becomes a distance matrix, and spikebot's own ``vpr.metrics`` / ``vpr.sequence`` score it.

What is not VPRTempo's stock command line, and why:
- ``filter=1`` (stock 8) and one reference traverse (stock ``spring,fall``): spikebot's reference frames are the
  places, so every reference frame is one place and one output neuron.
- Module layout: ``main.py`` divides by zero when there are fewer places than ``max_module`` (GardensPoint: 200);
  ``module_layout`` gives one module of that size, its STDP annealed over the steps it trains (as ``main.py``
  anneals every module), and matches ``main.py`` everywhere else.
- Its STDP step is replaced by ``ExactSTDP``, which gives bit-identical weights ~10x faster on CPU (checked against
  the original after every run; ``--stdp original`` uses VPRTempo's own). Without it Nordland takes ~9 h here.
- Inference calls the modules' ``forward`` as ``VPRTempo.evaluate`` sets them up; ``evaluate`` itself is not used
  (it builds its own diagonal ground truth and, in 1.1.10, fails on ``R`` unless ``PR_curve`` is set).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import vprtempo
    import vprtempo.src.blitnet as bn
    from vprtempo.src.dataset import CustomImageDataset, ProcessImage
    from vprtempo.VPRTempo import VPRTempo
    from vprtempo.VPRTempoTrain import VPRTempoTrain, train_new_model
except ImportError as error:  # pragma: no cover - an environment problem, not a code path
    sys.exit(f"cannot import vprtempo ({error}); run `bash benchmarks/vprtempo_env.sh` and set "
             "PYTHONPATH=.bench-envs/vprtempo")

from spikebot.provenance import __version__, git_commit
from vpr.data import PlaceDataset
from vpr.datasets import load_registered
from vpr.metrics import evaluate
from vpr.sequence import SequenceConfig, match_sequences

VPRTEMPO_VERSION = "1.1.10"
SEQUENCE_LENGTHS = (1, 5, 10)
TABLE_COLUMNS = ("dataset", "reference -> query", "split", "tol", "method", "seq L", "R@1", "R@5", "R@10",
                 "PR AUC", "R@100P", "train s", "query ms")
STAGED_NAME = "spikebot"  # VPRTempo's ``--dataset``: CSVs are ``./vprtempo/dataset/<dataset>-<dir>.csv``


@dataclass(frozen=True)
class Protocol:
    """``dataset:reference:query[:split]``, the way spikebot's benchmarks name an evaluation."""

    dataset: str
    reference: str
    query: str
    split: str = "all"

    @classmethod
    def parse(cls, text: str) -> Protocol:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise argparse.ArgumentTypeError(f"expected dataset:reference:query[:split], got {text!r}")
        return cls(*parts)

    @property
    def slug(self) -> str:
        return f"{self.dataset}_{self.reference}-{self.query}_{self.split}"


@dataclass(frozen=True)
class VPRTempoConfig:
    """VPRTempo's ``main.py`` argument defaults, except where a spikebot protocol fixes the value."""

    dims: tuple[int, int] = (56, 56)  # stock default
    patches: int = 15  # stock default (patch-normalisation window)
    epoch: int = 4  # stock default
    max_module: int = 500  # stock default (places per module)
    filter: int = 1  # stock 8; every spikebot reference frame is a place
    skip: int = 0  # stock default
    database_dirs: str = "reference"  # stock "spring,fall"; spikebot has one reference traverse
    query_dir: str = "query"

    def namespace(self, n_reference: int, n_query: int, data_dir: Path) -> argparse.Namespace:
        """The ``args`` object VPRTempo's modules copy their attributes from (all keys of ``parse_network``)."""
        return argparse.Namespace(
            dataset=STAGED_NAME, data_dir=str(data_dir), database_places=n_reference, query_places=n_query,
            max_module=self.max_module, database_dirs=self.database_dirs, query_dir=self.query_dir,
            GT_tolerance=0, skip=self.skip, filter=self.filter, epoch=self.epoch, patches=self.patches,
            dims=",".join(map(str, self.dims)), train_new_model=True, quantize=False, PR_curve=False,
            sim_mat=False, demo=False,
        )


def module_layout(n_places: int, max_module: int) -> list[int]:
    """Output neurons per module, as ``main.py`` computes them (it divides by zero for one partial module)."""
    if n_places <= max_module:
        return [n_places]
    n_modules = -(-n_places // max_module)
    remainder = n_places % max_module
    if remainder == 0:
        return [n_places // n_modules] * n_modules
    return [(n_places - remainder) // (n_modules - 1)] * (n_modules - 1) + [remainder]


def remainder_per_module(layout: Sequence[int]) -> list[int | None]:
    """``out_dim_remainder`` per module: ``main.py`` gives it to the last module only.

    A module's STDP annealing runs over ``T = out_dim_remainder * epoch`` steps when it is given, else over
    ``max_module * epoch``; giving it to the last module keeps ``T`` equal to the steps actually trained, which is
    what every ``main.py`` layout does. For a single module smaller than ``max_module`` (which ``main.py`` cannot
    build) this follows the same rule.
    """
    return [None] * (len(layout) - 1) + [layout[-1]]


def model_file_name(config: VPRTempoConfig, n_reference: int) -> str:
    """``main.py``'s ``generate_model_name`` (the script is not importable from the wheel)."""
    n_input = config.dims[0] * config.dims[1]
    return f"{config.database_dirs.replace(',', '')}_VPRTempo_IN{n_input}_FN{2 * n_input}_DB{n_reference}.pth"


# --------------------------------------------------------------------------------------------------- staging


def stage_dataset(dataset: PlaceDataset, config: VPRTempoConfig, root: Path) -> Path:
    """Lay the protocol's frames out the way VPRTempo reads them; returns its ``data_dir``.

    ``root/vprtempo/dataset/<dataset>-<dir>.csv`` lists ``Image_name,index`` (index = place = row), and
    ``root/frames/<dir>/`` holds zero-padded symlinks to spikebot's (filtered, split) frames in order.
    """
    data_dir = root / "frames"
    (root / "vprtempo" / "dataset").mkdir(parents=True)
    (root / "vprtempo" / "models").mkdir(parents=True)
    for folder, traverse in ((config.database_dirs, dataset.reference), (config.query_dir, dataset.query)):
        (data_dir / folder).mkdir(parents=True)
        rows = ["Image_name,index"]
        for index, frame in enumerate(traverse.frames):
            name = f"{index:06d}{Path(frame).suffix.lower()}"
            (data_dir / folder / name).symlink_to(Path(frame).resolve())
            rows.append(f"{name},{index}")
        (root / "vprtempo" / "dataset" / f"{STAGED_NAME}-{folder}.csv").write_text("\n".join(rows) + "\n")
    return data_dir


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """VPRTempo reads CSVs from and saves models to paths relative to the working directory."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ------------------------------------------------------------------------------------------------------ STDP


class ExactSTDP:
    """Drop-in for ``vprtempo.src.blitnet.calc_stdp``: the same floating-point operations in the same order.

    The original tiles pre- and post-synaptic spikes into dense (in, out) matrices, transposes them and writes
    weights through boolean-mask indexing: ~2.7 s per training image for the 3136 x 6272 feature layer on this
    machine. Here the update is a row-scaled add with a precomputed sign mask and the clamp uses precomputed
    per-weight bounds, so a step is a handful of contiguous passes; ``check_exact_stdp`` asserts identical bits.
    Masks and scratch space are kept for the layer being trained only.
    """

    def __init__(self) -> None:
        self._layer: weakref.ReferenceType[bn.SNNLayer] | None = None
        self._state: dict[str, Any] = {}

    def _prepare(self, layer: bn.SNNLayer) -> dict[str, Any]:
        if self._layer is not None and self._layer() is layer:
            return self._state
        exc, inh = layer.havconnCombinedExc, layer.havconnCombinedInh
        weight = layer.w.weight.data
        lower, upper = torch.zeros_like(weight), torch.zeros_like(weight)
        lower[exc], upper[exc] = 1e-06, 10.0  # calc_stdp's clamps of excitatory ...
        lower[inh], upper[inh] = -10.0, -1e-06  # ... and inhibitory weights; others stay exactly 0
        if layer.spk_force:
            mask = (exc | inh).to(weight.dtype)  # the two spike-forcing updates have the same sign
        else:
            mask = exc.to(weight.dtype) - inh.to(weight.dtype)
        self._layer = weakref.ref(layer)
        # After the clamp every connected weight is non-zero, so calc_stdp's torch.any(w) is this constant.
        self._state = {"lower": lower, "upper": upper, "mask": mask, "scratch": torch.empty_like(weight),
                       "any_weight": bool((exc | inh).any())}
        return self._state

    @torch.no_grad()
    def __call__(self, prespike: torch.Tensor, spikes: torch.Tensor, noclp: torch.Tensor, layer: bn.SNNLayer,
                 idx: torch.Tensor, prev_layer: bn.SNNLayer | None = None) -> bn.SNNLayer:
        state = self._prepare(layer)
        weight, scratch = layer.w.weight.data, state["scratch"]
        if layer.spk_force:
            # ((pre * post) * mask) * eta with post = forced - actual output; layer.x keeps the forced spike.
            idx_sel = torch.arange(int(idx[0]), int(idx[0]) + 1, device=layer.device, dtype=int)
            layer.x = torch.full_like(layer.x, 0)
            xdiff = layer.x.index_fill_(-1, idx_sel, 0.5) - spikes
            mpre = prespike if prev_layer.fire_rate is None else prespike / prev_layer.fire_rate
            torch.outer(xdiff.reshape(-1), mpre.reshape(-1), out=scratch)
            weight.add_(scratch.mul_(state["mask"]).mul_(layer.eta_stdp))
        else:
            # (0.5 - post) * [pre > 0] * [post > 0] * (+1 exc, -1 inh) * eta; the indicators are exact.
            post = spikes.reshape(-1)
            rate = ((0.5 - post) * (post > 0) * layer.eta_stdp).view(-1, 1)
            pre_on = (prespike.reshape(-1) > 0).to(weight.dtype)
            if bool(pre_on.all()):
                weight.addcmul_(rate, state["mask"])
            else:
                weight.addcmul_(rate, torch.mul(state["mask"], pre_on, out=scratch))
        weight.clamp_(min=state["lower"], max=state["upper"])
        if layer.have_rate and layer.eta_ip > 0.0:  # intrinsic threshold plasticity, as in calc_stdp
            layer.thr.data += layer.eta_ip * (layer.x - layer.fire_rate)
            layer.thr.data[layer.thr.data < 0] = 0
        if state["any_weight"] and layer.eta_stdp != 0:  # inhibitory homeostasis: ((noclp * w_inh) * eta) * 50
            torch.clamp(weight, max=0, out=scratch)
            weight.add_(scratch.mul_(noclp.reshape(-1, 1)).mul_(layer.eta_stdp).mul_(50))
        return layer


@contextlib.contextmanager
def stdp_implementation(name: str) -> Iterator[None]:
    """Route VPRTempoTrain's ``bn.calc_stdp(...)`` calls to ``ExactSTDP`` (``exact``) or leave them (``original``)."""
    original = bn.calc_stdp
    if name == "exact":
        bn.calc_stdp = ExactSTDP()
    try:
        yield
    finally:
        bn.calc_stdp = original


def check_exact_stdp(args: argparse.Namespace, config: VPRTempoConfig, images: torch.Tensor, out_dim: int) -> None:
    """Train copies of one module a few steps with each implementation and require identical parameters."""
    steps = [(name, index % out_dim) for name in ("feature_layer", "output_layer") for index in range(3)]
    module = VPRTempoTrain(args, list(config.dims), None, 1, out_dim)
    ours, theirs = copy.deepcopy(module), module
    fast = ExactSTDP()
    for step, (layer_name, label) in enumerate(steps):
        spikes = images[step % len(images)].reshape(1, -1)
        for model, stdp in ((theirs, bn.calc_stdp), (ours, fast)):
            layer = getattr(model, layer_name)
            pre, prev = spikes, None
            if layer_name == "output_layer":
                prev = model.feature_layer
                with torch.no_grad():
                    pre = bn.clamp_spikes(model.forward(spikes, prev), prev)
            out = model.forward(pre, layer)
            stdp(pre.detach(), bn.clamp_spikes(out, layer), out.detach(), layer, torch.tensor([label]),
                 prev_layer=prev)
    for name, tensor in theirs.state_dict().items():
        if not torch.equal(tensor, ours.state_dict()[name]):
            raise AssertionError(f"ExactSTDP differs from vprtempo's calc_stdp on {name}; use --stdp original")
    logging.info("ExactSTDP check: bit-identical to vprtempo.src.blitnet.calc_stdp over %d steps", len(steps))


# ------------------------------------------------------------------------------------------- train and query


def train(args: argparse.Namespace, config: VPRTempoConfig, layout: Sequence[int], stage: Path, seed: int) -> Path:
    """Build the modules as ``main.py`` does and train them with VPRTempo's own ``train_new_model``."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # blitnet draws connection masks with numpy
    models = [VPRTempoTrain(args, list(config.dims), None, len(layout), layout[0], out_dim_remainder=remainder)
              .to("cpu") for remainder in remainder_per_module(layout)]
    name = model_file_name(config, args.database_places)
    with working_directory(stage):
        train_new_model(models, name)
    return stage / "vprtempo" / "models" / name


def load_inference(args: argparse.Namespace, config: VPRTempoConfig, layout: Sequence[int], path: Path) -> list[VPRTempo]:
    """VPRTempo's inference modules loaded with its ``load_model``, wired up as ``VPRTempo.evaluate`` does."""
    models = [VPRTempo(args, list(config.dims), logging.getLogger("VPRTempo"), len(layout), None, layout[0],
                       out_dim_remainder=remainder) for remainder in remainder_per_module(layout)]
    for model in models:
        model.eval()
    models[0].load_model(models, str(path))
    models[0].inferences = [torch.nn.Sequential(m.feature_layer.w, m.output_layer.w).to(models[0].device)
                            for m in models]
    return models


def query_dataset(args: argparse.Namespace, config: VPRTempoConfig) -> CustomImageDataset:
    """The query frames through VPRTempo's own reader and ``ProcessImage``, as ``run_inference`` builds them."""
    return CustomImageDataset(annotations_file=f"./vprtempo/dataset/{STAGED_NAME}-{config.query_dir}.csv",
                              base_dir=args.data_dir, img_dirs=[config.query_dir],
                              transform=ProcessImage(list(config.dims), config.patches),
                              max_samples=args.query_places, filter=config.filter, skip=config.skip)


def median_ms(function: Any, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def run_queries(models: list[VPRTempo], queries: CustomImageDataset) -> tuple[np.ndarray, dict[str, float]]:
    """Every query's output (n_query x n_place similarity) and what reading, encoding and inference cost."""
    head = models[0]
    encoded, encode_seconds = [], []
    for index in range(len(queries)):
        start = time.perf_counter()
        spikes, label = queries[index]
        encode_seconds.append(time.perf_counter() - start)
        if int(label) != index:
            raise RuntimeError(f"query row {index} carries label {label}; staging is out of order")
        encoded.append(spikes.reshape(-1).float())
    batch = torch.stack(encoded).to(head.device)
    start = time.perf_counter()
    similarity = head.forward(batch)
    batch_seconds = time.perf_counter() - start
    single = batch[:1]
    timings = {
        "query_encode_ms_median": 1000 * statistics.median(encode_seconds),  # read + VPRTempo's ProcessImage
        "query_encode_ms_mean": 1000 * statistics.mean(encode_seconds),
        "query_forward_single_ms_median": median_ms(lambda: head.forward(single), repeats=min(50, len(queries))),
        "query_forward_batched_ms_per_query": 1000 * batch_seconds / len(queries),
    }
    # End to end per query: one frame on its own, and as part of a batch (encoding is per frame either way).
    timings["query_ms_single"] = timings["query_encode_ms_median"] + timings["query_forward_single_ms_median"]
    timings["query_ms_batched"] = timings["query_encode_ms_mean"] + timings["query_forward_batched_ms_per_query"]
    return similarity.cpu().numpy(), timings


def peak_rss_mib() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (the DataLoader workers)."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


# -------------------------------------------------------------------------------------------------- protocol


@dataclass
class VPRTempoRun:
    """VPRTempo's output on one protocol, what it cost, and how it was configured."""

    similarity: np.ndarray  # (n_query, n_place): the summed output-layer activity, higher = more similar
    costs: dict[str, Any]
    method: dict[str, Any]


def train_and_query(dataset: PlaceDataset, config: VPRTempoConfig, options: argparse.Namespace) -> VPRTempoRun:
    """Stage the frames, train on the references, run every query; the staging folder is removed after."""
    n_reference, n_query = len(dataset.reference), len(dataset.query)
    layout = module_layout(n_reference, config.max_module)
    logging.info("%s: %d reference, %d query frames; modules %s", dataset.name, n_reference, n_query, layout)
    stage = Path(tempfile.mkdtemp(prefix="vprtempo-"))
    try:
        args = config.namespace(n_reference, n_query, stage_dataset(dataset, config, stage))
        start = time.perf_counter()
        with stdp_implementation(options.stdp):
            model_path = train(args, config, layout, stage, options.seed)
        train_seconds = time.perf_counter() - start
        rss_after_training = peak_rss_mib()
        logging.info("%s: trained in %.1f s", dataset.name, train_seconds)

        models = load_inference(args, config, layout, model_path)
        with working_directory(stage):
            similarity, query_timings = run_queries(models, query_dataset(args, config))
        costs = {
            "train_seconds": train_seconds, **query_timings,
            "peak_rss_mib_after_training": rss_after_training, "peak_rss_mib_after_queries": peak_rss_mib(),
            "model_parameter_bytes": sum(p.numel() * p.element_size() for m in models for p in m.parameters()),
            "model_file_bytes": model_path.stat().st_size,
        }
        device = models[0].device
        del models

        stdp_check = "skipped"
        if options.stdp == "exact" and not options.skip_stdp_check:  # after the measurements: it holds two copies
            reader = CustomImageDataset(str(stage / "vprtempo" / "dataset" / f"{STAGED_NAME}-{config.database_dirs}.csv"),
                                        args.data_dir, [config.database_dirs],
                                        transform=ProcessImage(list(config.dims), config.patches), max_samples=3)
            check_exact_stdp(args, config, torch.stack([reader[i][0].float() for i in range(len(reader))]), layout[0])
            stdp_check = "bit-identical to vprtempo's calc_stdp (6 steps on this protocol's frames)"
    finally:
        if options.keep_stage:
            logging.info("staging kept at %s", stage)
        else:
            shutil.rmtree(stage, ignore_errors=True)

    method = {
        "name": "vprtempo", "package": f"vprtempo=={VPRTEMPO_VERSION}", "package_path": vprtempo.__file__,
        **dataclasses.asdict(config), "modules": layout, "seed": options.seed, "stdp": options.stdp,
        "stdp_check": stdp_check, "threads": torch.get_num_threads(), "device": device,
        "distance": "-(sum over modules of output_layer.w @ feature_layer.w @ query spikes)",
    }
    return VPRTempoRun(similarity, costs, method)


def run_protocol(protocol: Protocol, config: VPRTempoConfig, options: argparse.Namespace) -> list[dict[str, Any]]:
    """One protocol end to end; writes OUT/<protocol>/results.json (one entry per sequence length)."""
    data_root = options.data_root or os.environ.get("SPIKEBOT_DATA", "../shared/datasets")
    dataset = load_registered(protocol.dataset, protocol.reference, protocol.query, split=protocol.split,
                              data_root=data_root)
    run = train_and_query(dataset, config, options)
    distances = -run.similarity  # spikebot's convention: lower = more similar
    out_dir = Path(options.out) / protocol.slug
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "distances.npy", distances.astype(np.float32))

    results = []
    for length in SEQUENCE_LENGTHS:
        sequence = SequenceConfig(length=length)
        metrics = evaluate(match_sequences(distances, sequence), dataset.ground_truth)
        results.append({
            "method": "vprtempo", "dataset": dataset.name, **metrics.summary(),
            "n_reference": len(dataset.reference), "n_query": len(dataset.query),
            "config": {"method": run.method, "sequence": dataclasses.asdict(sequence), "dataset": dataset.info,
                       "recall_ns": list(metrics.recall)},
            "timings": run.costs,
            "spikebot_version": __version__, "git_commit": git_commit(),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "processor": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__},
        })
    summary = {"protocol": dataclasses.asdict(protocol), "results": results}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table(results))
    return results


def table_row(result: dict[str, Any]) -> list[str]:
    info, recall, timings = result["config"]["dataset"], result["recall"], result["timings"]
    return [
        result["dataset"], f"{info.get('reference', '?')} -> {info.get('query', '?')}", str(info.get("split", "all")),
        str(info.get("tolerance", "file")), result["method"], str(result["config"]["sequence"]["length"]),
        *(f"{recall[n]:.3f}" for n in ("1", "5", "10")), f"{result['auc_pr']:.3f}", f"{result['recall_at_100p']:.3f}",
        f"{timings['train_seconds']:.0f}", f"{timings['query_ms_single']:.1f}",
    ]


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(result)) + " |" for result in results]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", type=Protocol.parse, action="append",
                        help="dataset:reference:query[:split] (repeatable); e.g. gardens_point:day_right:night_right")
    parser.add_argument("--out", default="runs/vprtempo", help="results go to OUT/<protocol>/results.json")
    parser.add_argument("--data-root", default=None, help="default: $SPIKEBOT_DATA, else ../shared/datasets")
    parser.add_argument("--epochs", type=int, default=VPRTempoConfig.epoch, help="VPRTempo's --epoch (default 4)")
    parser.add_argument("--stdp", choices=("exact", "original"), default="exact",
                        help="exact: bit-identical fast STDP (default); original: vprtempo's calc_stdp")
    parser.add_argument("--skip-stdp-check", action="store_true", help="skip the ExactSTDP bit-identity check")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-stage", action="store_true", help="keep the staged folder and model for inspection")
    parser.add_argument("--collect", action="store_true", help="only print the table of results already under --out")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("VPRTempo").propagate = False
    torch.set_num_threads(options.threads)

    if options.collect:
        results = [r for path in sorted(Path(options.out).glob("*/results.json"))
                   for r in json.loads(path.read_text())["results"]]
    else:
        if not options.protocol:
            parser.error("--protocol is required unless --collect is given")
        config = VPRTempoConfig(epoch=options.epochs)
        results = [r for protocol in options.protocol for r in run_protocol(protocol, config, options)]
    print(markdown_table(results), end="")


if __name__ == "__main__":
    main()
