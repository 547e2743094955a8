"""Replay rosbag2 recordings through the detector: result bag (MCAP) + report (HTML, JSON, plots).

Reads MCAP and sqlite3 bags (split, compressed, metadata versions Foxy..Jazzy), runs every
sensor_msgs/Image and CompressedImage frame through the same per-frame pipeline as the ROS 2 node,
and writes to --out:
  result_bag/   the node's output topics (semantic, semantic_color, anomaly_score, anomaly_mask,
                overlay, status) with the input headers and receive times; plays with `ros2 bag play`
                and opens in Foxglove (message definitions are embedded)
  report/       report.html, summary.json, frames.csv, anomaly_over_time.png, contact_sheet.png,
                roc.png / pr.png when ground truth is given (--labels DIR or --label-topic)
Several bags, or a folder of bags, run in parallel worker processes (--jobs); each bag then gets
its own sub-folder and --out gets an index.html over all of them.

Exit status: 0 every bag replayed; 1 some bag could not be replayed (nothing readable, no image
topics, ...); 2 bad arguments or model.

Examples:
  pebal replay recordings/drive_0042 --out out/drive_0042
  pebal replay recordings/ --out out/fleet --jobs 4
  pebal replay drive.mcap --topics /front/image_raw/compressed --labels labels/ --out out/eval
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..config import add_config_arguments
from ..output_folder import FolderBusy, folder_lock, write_atomic
from ..outputs import writable_folder
from .model import MODEL_PRESET_HELP
from ..pipeline.messages import OUTPUT_NAMES
from .bag import FIND_DEPTH, STORAGE_SUFFIXES, BagError, find_bags
from .replay import ReplayError, ReplayOptions, replay_bag
from ..ros_names import check_namespace, check_topic


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bags", nargs="+", metavar="BAG", help="bag folders, .mcap/.db3 files, or folders of bags")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default=None, help="model (.onnx/.pt/.engine); default: the bundled model "
                   "through ONNX Runtime")
    p.add_argument("--runtime", default=None, help="onnxruntime | torch | tensorrt (default: from the suffix)")
    add_config_arguments(p, MODEL_PRESET_HELP)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    from ..model_settings import add_input_arguments, add_runtime_arguments
    add_runtime_arguments(p, threads=False)
    add_input_arguments(p)
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="input size of the network (inference.input_size; default: the model's own)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per worker "
                   "(default: cores / jobs) (= runtime.threads)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="bags replayed in parallel (processes)")
    p.add_argument("--topics", nargs="+", default=None, help="image topics (default: all Image/CompressedImage)")
    p.add_argument("--label-topic", default="auto", help="mono8 label image topic; 'auto' takes a single "
                   "image topic whose name contains 'label'/'ground_truth'; 'none' disables")
    p.add_argument("--labels", type=Path, default=None, help="folder of label PNGs (0 inlier/1 anomaly/255 "
                   "void, or train ids with 254 anomaly) for the first image topic")
    p.add_argument("--label-match", default="auto", choices=("auto", "stamp", "name", "index"),
                   help="how --labels files are matched to frames: stamp (file stem = header stamp in ns or "
                        "<sec>_<nanosec>), name (the number ending the stem = frame index), index (sorted order "
                        "= frame order); auto (default): the first that fits every file")
    p.add_argument("--label-kind", default="auto", choices=("auto", "anomaly", "semantic"),
                   help="label convention: anomaly (0 inlier, 1 anomaly, 255 void), semantic (train ids 0-18, "
                        "254 anomaly, 255 void); auto (default): told apart per image")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    p.add_argument("--outputs", nargs="+", default=list(OUTPUT_NAMES), choices=OUTPUT_NAMES,
                   help="output topics to write (default: all the node publishes)")
    p.add_argument("--namespace", default="", help="the node namespace to mimic: outputs go to "
                   "/<ns>/pebal/<output> (default: /pebal/<output>); with several cameras each camera "
                   "topic's namespace is appended, as the launch file does per camera. A ROS namespace: "
                   "letters, digits and '_' in tokens separated by '/'")
    p.add_argument("--output-resolution", default="camera", choices=("camera", "network"),
                   help="camera (default): outputs at the camera image size, as the node publishes them; "
                        "network: at the model's input size (cheaper; the node's output_resolution)")
    p.add_argument("--min-region-area", type=int, default=None,
                   help="smallest anomalous region reported, in pixels (default: the model's settings, 50)")
    p.add_argument("--max-frames", type=int, default=None, help="process at most N frames per topic "
                   "(the rest are counted as skipped)")
    p.add_argument("--reproducible", action="store_true", help="write 0 for the measured latencies in "
                   "the status messages, so the result bag is byte-identical between runs")
    p.add_argument("--overwrite", action="store_true", help="replace existing result_bag/ and report/")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def expand_bags(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Bags named directly, plus the bags in and below folders that are not bags themselves."""
    bags: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        try:
            exists, is_file = p.exists(), p.is_file()
        except OSError as exc:     # e.g. a parent folder the user may not enter
            problems.append(f"{p}: cannot be read: {exc.strerror or exc}")
            continue
        if not exists:
            problems.append(f"{p}: does not exist" + (
                "" if p.parent.exists() or p.parent == p else f" ({p.parent} does not exist either)"))
        elif is_file:
            bags.append(p)      # BagReader names the problem if it is not a bag
        else:
            found, trouble = find_bags(p)
            problems.extend(trouble)
            if found:
                bags.extend(found)
            elif not trouble:
                problems.append(f"{p}: not a rosbag2 recording (no metadata.yaml, no "
                                f"{'/'.join(STORAGE_SUFFIXES)} file) and holds no bags up to "
                                f"{FIND_DEPTH} folder levels below it")
    return bags, problems


def _names(bags: list[Path]) -> list[str]:
    """Output sub-folders: each bag's path below the folders they share (bags found at several
    depths keep their layout: fleet/day1/bag -> day1/bag), without storage suffixes."""
    if not bags:
        return []
    absolute = [b.resolve() for b in bags]
    common = Path(os.path.commonpath([b.parent for b in absolute]))
    seen: dict[str, int] = {}
    out = []
    for b in absolute:
        rel = b.relative_to(common)
        stem = (rel.parent / rel.name.split(".")[0]).as_posix() if b.is_file() else rel.as_posix()
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out


def settings_report(settings: Any) -> dict[str, Any]:
    """What the report says about the model and its settings (threshold used and where it came from)."""
    return {"summary": settings.summary(), "model": settings.info.summary(),
            "threshold": settings.threshold, "threshold_source": settings.source("threshold"),
            "threshold_calibrated": settings.threshold_calibrated,
            "values": dict(settings.as_key_values()), "warnings": list(settings.warnings)}


def replay_options(args: argparse.Namespace, settings: Any) -> ReplayOptions:
    """The per-bag options of a run: the flags, with the values the settings resolution decided
    (one place, so a local and a fleet replay of the same command run the same way)."""
    opts = _options(args)
    opts.threshold = settings.threshold
    opts.min_region_area = settings.inference.min_region_area
    opts.max_decoded_pixels = settings.config.input.max_decoded_pixels
    opts.heatmap_span = settings.inference.heatmap_span
    opts.settings = settings_report(settings)
    return opts


def _options(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(
        topics=args.topics, label_topic=None if args.label_topic == "none" else args.label_topic,
        labels_dir=args.labels, label_match=args.label_match, label_kind=args.label_kind,
        threshold=args.threshold, outputs=tuple(args.outputs), namespace=args.namespace,
        output_resolution=args.output_resolution, min_region_area=args.min_region_area or 50,
        reproducible=args.reproducible, max_frames=args.max_frames, progress=not args.no_progress,
        overwrite=args.overwrite)


def _run_one(bag: Path, out_dir: Path, opts: ReplayOptions, runtime: Any) -> dict[str, Any]:
    try:
        res = replay_bag(bag, runtime, out_dir, opts)
    except (BagError, ReplayError) as exc:
        return {"bag": str(bag), "exit_code": 1, "error": str(exc)}
    except OSError as exc:     # unreadable input or unwritable output: this bag fails, the others go on
        where = exc.filename if exc.filename is not None else bag
        return {"bag": str(bag), "exit_code": 1, "error": f"{where}: {exc.strerror or exc}"}
    except Exception as exc:  # noqa: BLE001 - a bug met on one bag must not cost the other bags
        return {"bag": str(bag), "exit_code": 1, "error": f"{bag}: {unexpected(exc)}"}
    det = res.summary["deterministic"]
    out = {"bag": str(bag), "exit_code": res.exit_code, "status_text": det["status_text"],
           "status": det["status"], "issues": det["issues"], "report": str(res.report_dir / "report.html"),
           "result_bag": str(res.result_bag), "frames_per_s": res.summary["timing"]["frames_per_s"],
           "topics": det["topics"]}
    if det["status"] == "incomplete":     # the output failed: the error names it, the summary says so
        out.update(error=f"{det['incomplete']} (the results in {res.out_dir} are incomplete; "
                   f"{res.report_dir / 'summary.json'} says what is missing)",
                   report=str(res.report_dir / "summary.json"))
    return out


def unexpected(exc: BaseException) -> str:
    """An error replay has no words for (a bug), in one line that still says where it happened."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return (f"replay failed with {type(exc).__name__}: {str(exc)[:200] or 'no details'}{where} "
            "(a bug in pebal: please report it with this line)")


_WORKER_RUNTIME: Any = None


def _worker_init(settings: Any, path: str, threads: int | None, unsafe: bool) -> None:
    global _WORKER_RUNTIME
    from ..open_model import open_runtime
    if unsafe:   # spawned workers do not inherit the CLI's opt-in
        from ..models.checkpoint import allow_unsafe_pickle
        allow_unsafe_pickle(True)
    _WORKER_RUNTIME = open_runtime(settings, threads=threads, quiet=True, path=Path(path))


def _worker(bag: str, out_dir: str, opts: ReplayOptions) -> dict[str, Any]:
    return _run_one(Path(bag), Path(out_dir), opts, _WORKER_RUNTIME)


def _print_result(r: dict[str, Any]) -> None:
    if "error" in r:
        err = r["error"]
        if r.get("status") == "incomplete":     # an output problem: the line names the output
            print(f"pebal replay: {err}", file=sys.stderr)
        else:
            print(f"pebal replay: {err if err.startswith(r['bag']) else r['bag'] + ': ' + err}", file=sys.stderr)
        return
    stream = sys.stdout if r["exit_code"] == 0 else sys.stderr
    print(f"{r['bag']}: {r['status_text']} ({r['frames_per_s']:.1f} frames/s)", file=stream)
    for issue in r["issues"]:
        print(f"  read problem: {issue}", file=sys.stderr)
    for t in r["topics"]:
        for reason, n in t["skip_reasons"].items():
            print(f"  {t['topic']}: {n} skipped: {reason}", file=sys.stderr)
    print(f"  result bag: {r['result_bag']}\n  report:     {r['report']}", file=stream)


def _write_index(out: Path, results: list[dict[str, Any]]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "summary.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    rows = []
    for r in results:
        rel = os.path.relpath(r["report"], out) if "report" in r else None
        link = f"<a href='{html.escape(rel)}'>report</a>" if rel else "-"
        rows.append(f"<tr><td>{html.escape(r['bag'])}</td><td>{html.escape(r.get('status_text') or r.get('error', ''))}"
                    f"</td><td>{link}</td></tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>PEBAL replay</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:.3em .6em}"
            "table{border-collapse:collapse}</style></head><body><h1>PEBAL replay: "
            f"{len(results)} bags</h1><table><tr><th>bag</th><th>result</th><th></th></tr>"
            + "".join(rows) + "</table></body></html>")
    return write_atomic(out / "index.html", page)


def main(args: argparse.Namespace) -> int:
    from ..model_settings import model_problem

    try:   # the outputs' topics: ROS's rules for the namespace, and for the longest topic under it
        ns = check_namespace(args.namespace, "--namespace")
        check_topic(f"/{ns}/pebal/{max(OUTPUT_NAMES, key=len)}" if ns else "/pebal", "output topic")
    except ValueError as exc:
        print(f"pebal replay: {exc}", file=sys.stderr)
        return 2
    bags, problems = expand_bags(args.bags)
    for p in problems:
        print(f"pebal replay: {p}", file=sys.stderr)
    if not bags:
        print("pebal replay: no bag to replay", file=sys.stderr)
        return 2
    if args.labels is not None and len(bags) > 1:
        print("pebal replay: --labels belongs to one recording; give one bag with it", file=sys.stderr)
        return 2
    try:
        settings = replay_settings(args, "pebal replay")
    except (FileNotFoundError, ValueError, RuntimeError, ImportError, SystemExit) as exc:
        print(f"pebal replay: {model_problem(exc) if not isinstance(exc, SystemExit) else exc}", file=sys.stderr)
        return 2
    writable_folder(args.out)   # before the model: an unwritable --out fails now, not after loading it
    try:
        with folder_lock(args.out):       # held to the end: a second run into --out stops here
            return _run(args, bags, settings)
    except FolderBusy as exc:
        print(f"pebal replay: {exc}", file=sys.stderr)
        return 1


def replay_settings(args: argparse.Namespace, prog: str) -> Any:
    """The model settings of a replay (local or fleet) from its flags; raises what command_settings
    raises, and SettingsError for a malformed --input-size."""
    from ..model_settings import command_settings
    size = None
    if args.input_size:
        from ..graph.contract import parse_hw
        from ..model_settings import SettingsError
        try:
            size = list(parse_hw(args.input_size))
        except ValueError as exc:
            raise SettingsError(f"--input-size: {exc}") from None
    return command_settings(args, prog, args.model, runtime=args.runtime, device=args.device,
                            flags={"threshold": args.threshold, "min_region_area": args.min_region_area,
                                   "input_size": size})


def _run(args: argparse.Namespace, bags: list[Path], settings: Any) -> int:
    from ..open_model import open_runtime, runtime_path

    opts = replay_options(args, settings)
    jobs = max(1, min(args.jobs, len(bags)))
    # runtime.threads (--threads, --set, --config) wins; else the cores shared among the workers
    threads = settings.options.threads or max(1, (os.cpu_count() or 1) // jobs)
    try:
        model = runtime_path(settings)   # once, here: workers must not race to export
        runtime = None if jobs > 1 else open_runtime(settings, threads=threads, path=model)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as exc:
        print(f"pebal replay: cannot load the model: {exc}", file=sys.stderr)
        return 2
    several = len(bags) > 1
    outs = [args.out / n if several else args.out for n in _names(bags)]
    results: list[dict[str, Any]] = []
    if jobs == 1:
        for bag, out in zip(bags, outs):
            r = _run_one(bag, out, opts, runtime)
            _print_result(r)
            results.append(r)
    else:
        import multiprocessing as mp

        # spawn: ONNX Runtime / torch thread pools do not survive fork reliably.
        opts.progress = False
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(settings, str(model), threads, bool(getattr(args, 'unsafe_load_pickle', False)))) as pool:
            futures = {pool.submit(_worker, str(b), str(o), opts): b for b, o in zip(bags, outs)}
            from tqdm import tqdm
            for fut in tqdm(as_completed(futures), total=len(futures), desc="bags", unit="bag",
                            disable=args.no_progress):
                try:
                    r = fut.result()
                except Exception as exc:  # noqa: BLE001 - a crashed worker fails its bag only
                    r = {"bag": str(futures[fut]), "exit_code": 1, "error": f"worker failed: {exc}"}
                _print_result(r)
                results.append(r)
        results.sort(key=lambda r: r["bag"])
    if several:
        print(f"index: {_write_index(args.out, results)}")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


__all__ = ["add_arguments", "main", "expand_bags"]
