"""``pebal calibrate ... --ray``: the normal frames' score statistics computed bag by bag on a Ray
cluster and merged exactly (:meth:`pebal_ros.calibrate.stats.CalibrationStats.merge`), so the
threshold is the one a single process picks from the same frames.

One task per bag, loose images in chunks of :data:`IMAGES_PER_TASK`, and the labelled anomaly sets
as one task; the rest (target, table, record, plot) is the one-machine command's own code.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

IMAGES_PER_TASK = 64


def sources(normal: Any, labelled: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    common = {"topics": args.topics, "every": args.every}
    # Absolute: the workers run in other folders, on other machines.
    out = [dict(common, kind="bag", inputs=[str(b.absolute())]) for b in normal.bags]
    imgs = [str(p.absolute()) for p in normal.images]
    out += [dict(common, kind="images", inputs=imgs[i:i + IMAGES_PER_TASK]) for i in range(0, len(imgs), IMAGES_PER_TASK)]
    if len(labelled):
        absolute = [f"{n}={Path(r).absolute()}" for n, _, r in (a.partition("=") for a in args.anomalies or [])]
        out.append({"kind": "labelled", "anomalies": absolute,
                    "anomaly_images": args.anomaly_images and args.anomaly_images.absolute(),
                    "anomaly_labels": args.anomaly_labels and args.anomaly_labels.absolute()})
    return out


def fleet_scorer(args: argparse.Namespace) -> Any:
    """A ``score`` function for :func:`pebal_ros.calibrate.cli.main` that runs on the cluster."""

    def score(settings: Any, normal: Any, labelled: Any, min_area: int,
              progress: bool) -> tuple[Any, tuple[int, int] | None]:
        from tqdm import tqdm

        from ..calibrate.cli import ScoringFailed
        from ..calibrate.sources import SourceError
        from ..calibrate.stats import CalibrationStats
        from ..open_model import runtime_path
        from .engine import ActorPool, FleetError, Task, connect, worker_count
        from .worker import FleetWorker, ModelShipment, sha256

        try:
            model = runtime_path(settings)
        except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
            raise ScoringFailed(f"cannot load the model: {exc}") from None
        todo = sources(normal, labelled, args)
        stats = CalibrationStats()
        errors: list[str] = []
        conn = pool = None
        try:
            conn = connect(args.ray or None)
            ray = conn.ray
            gpus = args.ray_gpus if args.ray_gpus is not None else (
                1.0 if settings.device in ("cuda", "auto") and conn.resources.get("GPU", 0) else 0.0)
            n = worker_count(conn.resources, args.ray_cpus, gpus, args.ray_workers, len(todo))
            print(f"pebal calibrate: {conn.describe()}; {len(todo)} source(s) on {n} worker(s)", flush=True)
            ship = ModelShipment(str(model.absolute()), sha256(model), [ray.put(model.read_bytes())])
            remote = ray.remote(FleetWorker).options(num_cpus=args.ray_cpus, num_gpus=gpus,
                                                     scheduling_strategy="SPREAD", max_restarts=0)
            threads = settings.options.threads or max(1, int(args.ray_cpus))
            unsafe = bool(getattr(args, "unsafe_load_pickle", False))
            pool = ActorPool(ray, lambda: remote.remote(settings, ship, threads, unsafe), n, retries=args.ray_retries)
            bar = tqdm(total=len(todo), desc="sources", unit="source", disable=not progress)

            def on_result(task: Any, res: dict[str, Any]) -> None:
                bar.update(1)
                if "error" in res:
                    errors.append(res["error"])
                    return
                stats.merge(CalibrationStats.from_state(res["state"]))
                for reason, k in res["normal_skips"].items():
                    normal.skips.reasons[reason] += k
                for reason, k in res["labelled_skips"].items():
                    labelled.skips.reasons[reason] += k
                normal.used_topics |= set(res["used_topics"])

            def on_lost(task: Any, why: str) -> None:
                print(f"pebal calibrate: {task.payload.get('inputs', ['labelled frames'])[0]}: {why}; retrying",
                      file=sys.stderr, flush=True)

            def on_given_up(task: Any) -> None:
                errors.append(f"{task.payload.get('inputs', ['labelled frames'])[0]}: {'; '.join(task.errors)}")

            def call(actor: Any, task: Any) -> Any:
                return actor.calibrate.remote(task.payload, min_area)

            pool.run([Task(i, s) for i, s in enumerate(todo)], call, on_result, on_lost, on_given_up)
            bar.close()
            sizes = [s.info.get("input_size") for s in pool.slots if s.info.get("input_size")]
        except FleetError as exc:
            raise ScoringFailed(str(exc)) from None
        finally:
            if pool is not None:
                pool.shutdown()
            if conn is not None:
                conn.close()
        if errors:
            # What the single-process run does with an unusable source: stop, naming it.
            raise SourceError("; ".join(errors))
        return stats, tuple(sizes[0]) if sizes else None

    return score
