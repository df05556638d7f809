"""Issue 7 on a borrowed GPU: the flow networks and the action models trained far longer than a 2-core CPU allows,
in one run that ends before a deadline (device time comes as one short lease).

Usage, from the repository root (``--seconds`` is the whole run's wall-clock budget)::

    python benchmarks/issue7_gpu.py --out runs/gpu7 --action-data runs/events/action/data --seconds 540

1. Simulates the flow sets (training seeds 0-47, validation 200000-200005, test 100000-100011, as in
   docs/benchmarks.md) with ``python -m events flow-data --workers``, and records a checksum of every array: the
   same seeds must give the same arrays on any machine, which the local sets can be checked against.
2. Calibrates: starts every training job at once for a few steps (one epoch for the action models) and reads its
   seconds per step from the model it saved. A job whose CUDA start fails is calibrated again on the CPU.
3. Gives every job the most steps that fit in the time left, trains them all at once and stops any job still
   running at the deadline. Every flow network sees the same number of 10 ms bins (a network trained on windows
   of 12 bins gets half the steps of one trained on 6), both action models the same epochs.
4. Scores every flow network on the validation and the test set on the CPU (validation chooses among the spiking
   variants; test is what is reported) and the action models on the test clips (``action-train``'s evaluation).
5. Writes ``summary.json`` and a tarball of the models, logs and scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPIKING = ["--model", "spiking", "--channels", "8,16,31"]
SPIKING_RECURRENT = ["--model", "spiking", "--channels", "8,16,38", "--residual-blocks", "0",
                     "--network", '{"recurrent_encoders": true}']
LSTM = ["--model", "lstm"]


@dataclass
class Job:
    """One training run: ``python -m events`` with ``args`` plus its length (steps or epochs) and device."""

    name: str
    family: str  # "flow" or "action"
    args: list[str]
    bins: int = 0
    device: str = "auto"
    seconds_per_unit: float | None = None
    units: int = 0
    result: dict = field(default_factory=dict)

    def command(self, out: Path, units: int, calibrating: bool) -> list[str]:
        length = ["--steps", str(units)] if self.family == "flow" else ["--epochs", str(units)]
        extra = ["--no-eval"] if calibrating and self.family == "action" else []
        return [sys.executable, "-m", "events", *self.args, "--out", str(out), *length, "--device", self.device,
                *extra]


def flow_jobs(train: Path, batch: int) -> list[Job]:
    common = ["flow-train", "--data", str(train), "--batch", str(batch)]
    return [
        Job("lstm_b6", "flow", [*common, *LSTM, "--bins", "6"], bins=6),
        Job("spiking_b6", "flow", [*common, *SPIKING, "--bins", "6"], bins=6),
        Job("spiking_b6_seed1", "flow", [*common, *SPIKING, "--bins", "6", "--seed", "1"], bins=6),
        Job("spiking_rec_b6", "flow", [*common, *SPIKING_RECURRENT, "--bins", "6"], bins=6),
        Job("lstm_b12", "flow", [*common, *LSTM, "--bins", "12"], bins=12),
        Job("spiking_b12", "flow", [*common, *SPIKING, "--bins", "12"], bins=12),
    ]


def action_jobs(data: Path) -> list[Job]:
    return [Job(name, "action", ["action-train", "--model", name, "--data", str(data)])
            for name in ("spikepoint", "pointnet")]


def run_all(commands: dict[str, list[str]], logs: Path, deadline: float, env: dict[str, str]) -> dict[str, dict]:
    """Run ``commands`` at once, each logging to ``logs/NAME.log``; kill those still running at ``deadline``."""
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running = {name: subprocess.Popen(command, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                      env=env) for name, command in commands.items()}
    results: dict[str, dict] = {}
    while running:
        for name, process in list(running.items()):
            code = process.poll()
            if code is None and time.monotonic() > deadline:
                process.kill()
                code = process.wait()
                results[name] = {"returncode": code, "killed_at_deadline": True}
            elif code is not None:
                results[name] = {"returncode": code}
            else:
                continue
            results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
            del running[name]
        time.sleep(0.5)
    return results


def train_seconds(job: Job, folder: Path) -> float:
    if job.family == "flow":
        return json.loads((folder / "flow_model.json").read_text())["history"]["train_seconds"]
    return json.loads((folder / "model.json").read_text())["metadata"]["metrics"]["train_seconds"]


def array_checksums(folder: Path) -> dict[str, str]:
    with np.load(folder / "sequences.npz") as arrays:
        return {name: hashlib.sha256(np.ascontiguousarray(arrays[name]).tobytes()).hexdigest()[:16]
                for name in arrays.files}


def start_mps(log) -> bool:
    """CUDA MPS lets the jobs' small kernels run side by side; kept only if a CUDA call works under it."""
    if not shutil.which("nvidia-cuda-mps-control"):
        log("MPS: nvidia-cuda-mps-control not found; the jobs share the GPU by time slicing")
        return False
    subprocess.run(["nvidia-cuda-mps-control", "-d"], check=False)
    try:
        subprocess.run([sys.executable, "-c", "import torch; torch.ones(1, device='cuda').sum().item()"],
                       check=True, timeout=30)
        log("MPS: on")
        return True
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", check=False)
        log(f"MPS: a CUDA call failed under it ({error}); turned off")
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--action-data", type=Path, required=True, help="A set from action-data.")
    parser.add_argument("--seconds", type=float, default=540.0, help="Wall-clock budget of the whole run.")
    parser.add_argument("--tarball", type=Path, help="Where to write the tarball [default: OUT/issue7_gpu.tar.gz].")
    parser.add_argument("--train-seeds", default="0:48")
    parser.add_argument("--val-seeds", default="200000:200006")
    parser.add_argument("--test-seeds", default="100000:100012")
    parser.add_argument("--flow-batch", type=int, default=24)
    parser.add_argument("--calibration-steps", type=int, default=40)
    parser.add_argument("--eval-reserve", type=float, default=75.0, help="Seconds kept for scoring and packing.")
    parser.add_argument("--safety", type=float, default=0.8, help="Share of the time left that training plans on.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mps", action="store_true", help="Try CUDA MPS (needs nvidia-cuda-mps-control).")
    parser.add_argument("--families", default="flow,action", help="Which jobs to run: flow, action or both.")
    options = parser.parse_args()
    start = time.monotonic()
    deadline = start + options.seconds
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    summary: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv, "options": {
        key: str(value) for key, value in vars(options).items()}}

    def log(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {message}", flush=True)

    summary["mps"] = start_mps(log) if options.mps and shutil.which("nvidia-smi") else False
    probe = ("import json, os, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), "
             "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'cpus': os.cpu_count()}))")
    summary["machine"] = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                                   check=True).stdout)  # in a child: MPS must start before CUDA here
    log(f"machine: {summary['machine']}")

    sets = {"train": options.train_seeds, "val": options.val_seeds, "test": options.test_seeds}
    data = {name: out / "flow_data" / name for name in sets}
    missing = {name: seeds for name, seeds in sets.items() if not (data[name] / "sequences.json").is_file()}
    if missing:
        results = run_all({f"data_{name}": [sys.executable, "-m", "events", "flow-data", "--out", str(data[name]),
                                            "--seeds", seeds, "--workers", str(max(1, options.workers // 2))]
                           for name, seeds in missing.items()}, out / "logs", deadline, env)
        if any(r["returncode"] for r in results.values()):
            raise SystemExit(f"flow-data failed: {results} (logs in {out / 'logs'})")
    summary["flow_data_checksums"] = {name: array_checksums(folder) for name, folder in data.items()}
    log(f"flow sets ready: {summary['flow_data_checksums']}")

    families = set(options.families.split(","))
    jobs = ((flow_jobs(data["train"], options.flow_batch) if "flow" in families else [])
            + (action_jobs(options.action_data) if "action" in families else []))
    calibration = out / "calibration"
    for attempt in ("auto", "cpu"):
        todo = [job for job in jobs if job.seconds_per_unit is None and (attempt == "auto" or job.device == "cpu")]
        units = {job.name: (options.calibration_steps if job.family == "flow" else 1) for job in todo}
        results = run_all({job.name: job.command(calibration / job.name, units[job.name], calibrating=True)
                           for job in todo}, out / "logs" / f"calibration_{attempt}", deadline, env)
        for job in todo:
            if results[job.name]["returncode"] == 0:
                job.seconds_per_unit = train_seconds(job, calibration / job.name) / units[job.name]
            else:
                job.device = "cpu"
        log("calibration (" + attempt + "): " + ", ".join(
            f"{job.name} {job.seconds_per_unit:.3f} s/{'step' if job.family == 'flow' else 'epoch'}"
            if job.seconds_per_unit is not None else f"{job.name} failed" for job in todo))
    jobs = [job for job in jobs if job.seconds_per_unit is not None]
    summary["calibration"] = {job.name: {"device": job.device, "seconds_per_unit": job.seconds_per_unit}
                              for job in jobs}

    train_deadline = deadline - options.eval_reserve
    planned = (train_deadline - time.monotonic() - 20.0) * options.safety  # 20 s: the jobs' imports and CUDA start
    flow = [job for job in jobs if job.family == "flow"]
    action = [job for job in jobs if job.family == "action"]
    if flow:
        bins_budget = planned / max(job.seconds_per_unit / job.bins for job in flow)
        for job in flow:
            steps = int(bins_budget / job.bins)
            job.units = max(1, steps // 100 * 100 if steps >= 100 else steps)  # round hundreds, for readable tables
    if action:
        epochs = max(1, int(planned / max(job.seconds_per_unit for job in action)))
        for job in action:
            job.units = epochs
    log("plan: " + ", ".join(f"{job.name} {job.units} {'steps' if job.family == 'flow' else 'epochs'} on "
                             f"{job.device}" for job in jobs))
    models = out / "models"
    results = run_all({job.name: job.command(models / job.name, job.units, calibrating=False) for job in jobs},
                      out / "logs" / "train", train_deadline, env)
    for job in jobs:
        job.result = results[job.name]
        if job.result["returncode"] == 0:
            job.result["train_seconds"] = train_seconds(job, models / job.name)
    summary["training"] = {job.name: {"device": job.device, "units": job.units, "args": job.args, **job.result}
                           for job in jobs}
    log(f"training done: {summary['training']}")

    trained_flow = [job for job in flow if job.result.get("returncode") == 0]
    scores = out / "scores"
    results = run_all({f"{split}_{job.name}": [sys.executable, "-m", "events", "flow-eval", "--data", str(data[split]),
                                               "--model", str(models / job.name), "--no-baselines", "--out",
                                               str(scores / f"{split}_{job.name}.json")]
                       for job in trained_flow for split in ("val", "test")}, out / "logs" / "scores",
                      deadline - 10.0, env)
    summary["flow_scores"] = {}
    for job in trained_flow:
        row = {}
        for split in ("val", "test"):
            path = scores / f"{split}_{job.name}.json"
            if path.is_file():
                (score,) = json.loads(path.read_text())["results"].values()
                row[split] = {key: score[key] for key in ("aee", "outlier_percent", "parameters")}
        summary["flow_scores"][job.name] = row
    summary["action_scores"] = {}
    for job in action:
        path = models / job.name / "eval.json"
        if path.is_file():
            report = json.loads(path.read_text())
            summary["action_scores"][job.name] = {key: report[key] for key in (
                "parameters", "window_accuracy", "clip_accuracy", "per_class_accuracy", "mean_firing_rate")
                if key in report}
    summary["seconds"] = round(time.monotonic() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, row in summary["flow_scores"].items():
        log(f"{name}: " + ", ".join(f"{split} AEE {r['aee']:.3f} ({r['outlier_percent']:.2f}% > 3 px)"
                                     for split, r in row.items()))
    for name, row in summary["action_scores"].items():
        log(f"{name}: test window {row['window_accuracy']:.1%}, clip {row['clip_accuracy']:.1%}")
    if summary["mps"]:
        subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", check=False)
    tarball = options.tarball or out / "issue7_gpu.tar.gz"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz") as archive:
        for part in ("summary.json", "logs", "models", "scores"):
            if (out / part).exists():
                archive.add(out / part, arcname=part)
        for manifest in calibration.glob("*/*.json"):  # the calibration runs' seconds, not their weights
            archive.add(manifest, arcname=str(manifest.relative_to(out)))
    log(f"wrote {out / 'summary.json'} and {tarball} ({tarball.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
