"""The ``--ray`` options shared by ``pebal replay`` and ``pebal calibrate`` (no Ray import here)."""
from __future__ import annotations

import argparse


def add_ray_arguments(p: argparse.ArgumentParser, resume: bool) -> None:
    g = p.add_argument_group("fleet on a Ray cluster (needs the ray extra: pip install 'pebal_ros[ray]')")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: one task per bag on actors that open the model once. Without "
                   "ADDRESS: the cluster this machine belongs to (RAY_ADDRESS or `ray start`), else a local one; "
                   "'auto': an existing cluster only; HOST:PORT or ray://HOST:PORT: that cluster. Bags, model "
                   "and --out must be on storage every node sees (the model is sent to nodes that do not see it)")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="actors (worker processes) to start (default: as many as the cluster's free CPUs, or "
                   "GPUs with --device cuda, hold)")
    g.add_argument("--ray-cpus", type=float, default=1.0, metavar="N",
                   help="CPUs each worker reserves; also its ONNX Runtime threads unless --threads (default 1)")
    g.add_argument("--ray-gpus", type=float, default=None, metavar="N",
                   help="GPUs each worker reserves (default: 1 with --device cuda/auto on a cluster with GPUs, "
                   "else 0; 0.5 puts two workers on a GPU)")
    g.add_argument("--ray-retries", type=int, default=3, metavar="N",
                   help="times a bag is retried after its worker was lost (node gone, process killed); a bag "
                   "that fails by itself (corrupt, no image topics) is reported, never retried (default 3)")
    if resume:
        g.add_argument("--resume", action="store_true",
                       help="with --ray: keep the bags an earlier run with the same --out completed (their "
                       "fleet.json marker and files are intact) and replay only the others")


def check_ray_arguments(args: argparse.Namespace, prog: str) -> str | None:
    """A one-line problem with the fleet options, or None."""
    if args.ray is None:
        if getattr(args, "resume", False):
            return "--resume goes with --ray (a local run replays every bag it is given)"
        return None
    if getattr(args, "jobs", 1) != 1:
        return "--jobs is the one-machine path's; with --ray the workers are --ray-workers"
    for name in ("ray_workers", "ray_retries"):
        v = getattr(args, name)
        if v is not None and v < (1 if name == "ray_workers" else 0):
            return f"--{name.replace('_', '-')} must be >= {1 if name == 'ray_workers' else 0}, got {v}"
    if args.ray_cpus <= 0:
        return f"--ray-cpus must be > 0, got {args.ray_cpus:g}"
    if args.ray_gpus is not None and args.ray_gpus < 0:
        return f"--ray-gpus must be >= 0, got {args.ray_gpus:g}"
    return None
