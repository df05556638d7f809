"""STMDP (spiking) against the transformer baseline: the same demonstrations and the same training budget per task,
then seeded evaluation with DDIM and DDPM; prints a markdown table and plots success over training.

    python benchmarks/policy_bench.py                       # 4 tasks x 2 models, 1500 steps, 50 eval episodes
    python benchmarks/policy_bench.py --tasks button-press-v3 --steps 1000 --eval-episodes 20 --samplers ddim

Everything lands in ``--out`` (default ``runs/policy/bench``): ``demos/TASK.npz`` (50 expert episodes, seeds 0..49,
recorded once and shared by both models), one run folder per task and model (``TASK-MODEL``: config, checkpoints,
metrics; an interrupted benchmark resumes every run from its latest checkpoint), ``TASK-MODEL/eval-SAMPLER.json``
(kept, and reused when the checkpoint step and episode count match), ``results.md`` and ``success.png``.
Latency is per action chunk with one episode at a time (``--eval-batch 1``), on the device that trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from policy.demos import record_demos, save_demos
from policy.diffusion import DiffusionPolicy
from policy.envs import TASKS
from policy.plots import plot_success
from policy.runner import evaluate
from policy.workspace import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--models", nargs="+", default=["stmdp", "transformer"], choices=["stmdp", "transformer"])
    parser.add_argument("--demo-episodes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=1500, help="training steps, the same for every model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-every", type=int, default=500, help="periodic evaluation during training")
    parser.add_argument("--train-eval-episodes", type=int, default=10, help="episodes per periodic evaluation")
    parser.add_argument("--eval-episodes", type=int, default=50, help="episodes of the final evaluation")
    parser.add_argument("--samplers", nargs="+", default=["ddim", "ddpm"], choices=["ddim", "ddpm"])
    parser.add_argument("--ddim-steps", type=int, default=10)
    parser.add_argument("--eval-batch", type=int, default=1, help="episodes in lockstep (1: true per-chunk latency)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/policy/bench"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    runs = []
    for task in args.tasks:
        demo_path = args.out / "demos" / f"{task}.npz"
        if not demo_path.is_file():
            print(f"recording {args.demo_episodes} expert episodes of {task}", flush=True)
            save_demos(record_demos(task, args.demo_episodes, 0), demo_path)
        for model in args.models:
            config = TrainConfig(task=task, model=model, demos=str(demo_path), steps=args.steps,
                                 batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                                 eval_episodes=args.train_eval_episodes, eval_batch=max(args.train_eval_episodes, 1),
                                 checkpoint_every=args.eval_every or args.steps, seed=args.seed, device=args.device,
                                 torch_threads=args.threads)
            run_dir = args.out / f"{task}-{model}"
            result = train(config, run_dir, log=lambda message: print(f"  {message}", flush=True))
            runs.append(run_dir)
            policy = DiffusionPolicy.load(result.checkpoint, device=config.resolved_device())
            for sampler in args.samplers:
                path = run_dir / f"eval-{sampler}.json"
                cached = json.loads(path.read_text()) if path.is_file() else None
                if cached and cached.get("step") == result.step and cached.get("episodes") == args.eval_episodes:
                    document = cached
                else:
                    started = time.perf_counter()
                    evaluation = evaluate(policy, task, args.eval_episodes, sampler=sampler,
                                          inference_steps=args.ddim_steps, batch=args.eval_batch, noise_seed=args.seed)
                    document = {"step": result.step, "device": str(policy.device), "threads": torch.get_num_threads(),
                                **evaluation.to_dict(), "eval_seconds": time.perf_counter() - started}
                    path.write_text(json.dumps(document, indent=2) + "\n")
                rows.append({"task": task, "model": model, "parameters": result.metrics["parameters"],
                             "steps": result.step, "train_seconds": result.train_seconds,
                             **document})
                print(f"  {task} {model} {sampler}: success {document['success_rate']:.0%}", flush=True)

    table = markdown_table(rows, args)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    print(f"written {args.out / 'results.md'} and {plot_success(runs, args.out / 'success.png')}")
    return 0


def markdown_table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        (f"Diffusion policies, {args.demo_episodes} expert demonstrations per task, {args.steps} steps of batch "
         f"{args.batch_size} per model; {args.eval_episodes} evaluation episodes (seeds from 1,000,000)."),
        "",
        "| task | model | params | train s | ms/step | sampler | success | mean length | latency ms/chunk (median, p95) | device |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        sampler = "DDPM-100" if row["sampler"] == "ddpm" else f"DDIM-{row['inference_steps']}"
        lines.append(
            f"| {row['task']} | {row['model']} | {row['parameters'] / 1e6:.2f} M | {row['train_seconds']:.0f} | "
            f"{1000 * row['train_seconds'] / max(row['steps'], 1):.0f} | {sampler} | "
            f"{row['success_rate']:.0%} ({sum(row['success'])}/{row['episodes']}) | {row['mean_length']:.0f} | "
            f"{row['latency_ms_median']:.1f}, {row['latency_ms_p95']:.1f} | {row['device']}, {row['threads']} thr |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
