"""``pebal replay ... --ray``: the bags of a fleet replayed on a Ray cluster.

The driver finds the bags exactly as a local replay does (same discovery, same refusals, same
output folders), decides per bag what to do (``--resume``: skip the complete ones), ships the model,
starts the actors, commits each bag as its result arrives, and writes the fleet report at the end,
also when interrupted or when some bags could not be replayed (it then says which and why).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..output_folder import FolderBusy, folder_lock
from . import done as dn

PROG = "pebal replay"


def _say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def plan(bags: list[Any], outs: list[Path], resume: bool, overwrite: bool) -> list[dict[str, Any]]:
    """Per bag: 'complete' (skipped: --resume and its marker says done), 'refused' (an earlier
    run's results are there and neither --resume nor --overwrite was given), or 'todo'."""
    entries = []
    for i, (bag, out) in enumerate(zip(bags, outs)):
        e: dict[str, Any] = {"key": i, "bag": str(bag), "out": out, "state": "todo", "record": None, "reason": ""}
        record = dn.bag_complete(out)
        if record is not None and resume and not overwrite:
            e.update(state="complete", record=record)
        elif dn.leftovers(out) and not (resume or overwrite):
            e.update(state="refused", reason=f"{out} holds results of an earlier run; pass --resume to keep "
                     "the complete bags and redo the rest, or --overwrite to redo everything")
        entries.append(e)
    return entries


def _line(e: dict[str, Any]) -> None:
    r = e.get("record") or {}
    where = r.get("worker", {}).get("host", "?")
    if r.get("error"):
        _say(f"{e['bag']}: {r['error']}")
        return
    f = r.get("figures") or {}
    stream = sys.stdout if r.get("exit_code") == 0 else sys.stderr
    print(f"{e['bag']}: {f.get('status_text', '?')} ({f.get('frames_per_s', 0):.1f} frames/s on {where}"
          + (f", attempt {r.get('attempt')}" if r.get("attempt", 1) > 1 else "") + ")", file=stream, flush=True)


def run(args: argparse.Namespace) -> int:
    from ..model_settings import model_problem
    from ..outputs import writable_folder
    from ..replay.cli import _names, expand_bags, replay_options, replay_settings
    from .engine import FleetError
    from .report import write_fleet_report

    from .storage import find_uri_bags, is_uri, uri_names

    t_start = time.time()
    uris = [b for b in args.bags if is_uri(b)]
    if uris and len(uris) != len(args.bags):
        _say("give bags either as URIs (s3://, gs://, file://) or as paths, not both")
        return 2
    if uris:
        try:
            bags, problems = find_uri_bags(uris)
        except FleetError as exc:
            _say(str(exc))
            return 2
        names = uri_names(bags)
    else:
        bags, problems = expand_bags(args.bags)
        names = _names(bags)
    for p in problems:
        _say(p)
    if not bags:
        _say("no bag to replay")
        return 2
    if args.labels is not None and len(bags) > 1:
        _say("--labels belongs to one recording; give one bag with it")
        return 2
    try:
        settings = replay_settings(args, PROG)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError, SystemExit) as exc:
        _say(model_problem(exc) if not isinstance(exc, SystemExit) else str(exc))
        return 2
    out = writable_folder(args.out)
    opts = replay_options(args, settings)
    opts.progress, opts.overwrite = False, False   # each attempt writes into a fresh folder
    if opts.labels_dir is not None:
        opts.labels_dir = opts.labels_dir.absolute()     # read by a worker, in another folder

    try:       # one driver per OUT (the same lock as a local replay's: a local run there waits too)
        lock = folder_lock(out).__enter__()
    except FolderBusy as exc:
        _say(str(exc))
        return 2
    try:
        outs = [out / n if len(bags) > 1 else out for n in names]
        entries = plan(bags, outs, args.resume, args.overwrite)
        todo = [e for e in entries if e["state"] == "todo"]
        partial = out / dn.PARTIAL
        dn.discard(partial)          # attempts of an earlier run that never finished
        info: dict[str, Any] = {"command": " ".join(sys.argv), "started": t_start, "problems": problems,
                                "resumed": sum(e["state"] == "complete" for e in entries)}
        for e in entries:
            if e["state"] == "refused":
                _say(f"{e['bag']}: {e['reason']}")
        if info["resumed"]:
            print(f"{PROG}: {info['resumed']} of {len(entries)} bag(s) already complete in {out} (--resume)",
                  flush=True)
        old_handler = signal.getsignal(signal.SIGINT)
        try:
            code = _replay(args, out, settings, opts, entries, todo, partial, info)
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, old_handler)
        info["wall_s"] = time.time() - t_start
        index = write_fleet_report(out, entries, info)
        print(f"fleet report: {index}", flush=True)
        dn.discard(partial)
        if code:
            return code
        return 0 if all(e["state"] in ("replayed", "complete") and (e["record"] or {}).get("exit_code") == 0
                        for e in entries) else 1
    finally:
        lock.__exit__(None, None, None)


def _replay(args: argparse.Namespace, out: Path, settings: Any, opts: Any, entries: list[dict[str, Any]],
            todo: list[dict[str, Any]], partial: Path, info: dict[str, Any]) -> int:
    """Runs the todo bags on the cluster; fills ``entries`` in place. 0, or 2 / 130 for a run that
    could not go on (the entries not finished then say why)."""
    from ..open_model import runtime_path
    from .engine import ActorPool, FleetError, Task, connect, worker_count
    from .worker import FleetWorker, ModelShipment, sha256

    if not todo:
        return 0
    conn = pool = None
    try:
        try:
            model = runtime_path(settings)          # once, here: workers must not race to export
        except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
            _say(f"cannot load the model: {exc}")
            return _unfinished(todo, f"not replayed: the model could not be loaded ({exc})", 2)
        conn = connect(args.ray or None)
        ray = conn.ray
        gpus = args.ray_gpus if args.ray_gpus is not None else (
            1.0 if settings.device in ("cuda", "auto") and conn.resources.get("GPU", 0) else 0.0)
        cpus = args.ray_cpus
        n = worker_count(conn.resources, cpus, gpus, args.ray_workers, len(todo))
        threads = settings.options.threads or max(1, int(cpus))
        info["cluster"] = {"address": conn.address, "nodes": conn.nodes, "resources": conn.resources,
                           "workers": n, "cpus_per_worker": cpus, "gpus_per_worker": gpus}
        print(f"{PROG}: {conn.describe()}; {len(todo)} bag(s) on {n} worker(s) ({cpus:g} CPU"
              + ("" if cpus == 1 else "s") + (f", {gpus:g} GPU" if gpus else "") + " each)", flush=True)
        ship = ModelShipment(str(model.absolute()), sha256(model), [ray.put(model.read_bytes())])
        remote = ray.remote(FleetWorker).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy="SPREAD",
                                                 max_restarts=0)
        unsafe = bool(getattr(args, "unsafe_load_pickle", False))
        pool = ActorPool(ray, lambda: remote.remote(settings, ship, threads, unsafe), n, retries=args.ray_retries)
        partial.mkdir(parents=True, exist_ok=True)
        by_key = {e["key"]: e for e in todo}
        # Longest first (bytes on disk): the last bags to finish are short ones, so workers stay busy.
        tasks = [Task(e["key"], e) for e in sorted(todo, key=lambda e: -_size(e["bag"]))]

        def call(actor: Any, task: Any) -> Any:
            e = task.payload
            e["tmp"] = partial / f"{task.key:06d}-{task.attempts}"
            name = e["out"].relative_to(out).as_posix() if e["out"] != out else "."
            # Workers run in other folders, on other machines: absolute paths to them, the names as
            # given in the reports.
            source = e["bag"] if "://" in e["bag"] else os.path.abspath(e["bag"])
            return actor.replay.remote(source, name, os.path.abspath(e["tmp"]), opts, task.attempts + 1,
                                       str(e["out"]), e["bag"])

        def on_result(task: Any, record: dict[str, Any]) -> None:
            e = by_key[task.key]
            try:
                dn.commit(e["tmp"], e["out"])
            except OSError as exc:
                e.update(state="failed", reason=f"cannot move the result into {e['out']}: {exc}")
                _say(f"{e['bag']}: {e['reason']}")
                return
            e.update(state="replayed", record=record, reason=record.get("error") or "",
                     attempts=task.attempts + 1, lost=list(task.errors))
            _line(e)

        def on_lost(task: Any, why: str) -> None:
            e = by_key[task.key]
            dn.discard(e["tmp"])
            _say(f"{e['bag']}: {why}; " + ("retrying" if task.attempts <= args.ray_retries else "giving up"))

        def on_given_up(task: Any) -> None:
            e = by_key[task.key]
            if e.get("tmp"):
                dn.discard(e["tmp"])
            e.update(state="failed", reason="; ".join(task.errors), attempts=task.attempts + 1)
            _say(f"{e['bag']}: not replayed: {e['reason']}")

        pool.run(tasks, call, on_result, on_lost, on_given_up)
        return 0
    except KeyboardInterrupt:
        _quiet_interrupts()
        # Said before the workers are stopped (finally): that waits on the cluster, which may be slow.
        _unfinished(todo, "not replayed: the run was interrupted (Ctrl-C) before this bag finished", 0)
        _say(f"interrupted: {sum(e['state'] in ('replayed', 'complete') for e in entries)} of {len(entries)} "
             "bag(s) complete; run the same command with --resume to replay the rest")
        return 130
    except FleetError as exc:
        _say(str(exc))
        return _unfinished(todo, f"not replayed: {exc}", 2)
    finally:
        if pool is not None:
            pool.shutdown()
        if conn is not None:
            conn.close()


def _unfinished(todo: list[dict[str, Any]], reason: str, code: int) -> int:
    for e in todo:
        if e["state"] == "todo":
            e.update(state="missing", reason=reason)
    return code


def _quiet_interrupts() -> None:
    """After the first Ctrl-C the driver cleans up (seconds): a second one must not leave a traceback
    and half-written files."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _size(name: str) -> int:
    if "://" in name:
        return 0          # object storage: not worth a listing per bag
    bag = Path(name)
    try:
        if bag.is_file():
            return bag.stat().st_size
        return sum(p.stat().st_size for p in bag.iterdir() if p.is_file())
    except OSError:
        return 0
