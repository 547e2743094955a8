"""The fleet's actor: one per worker process, the model opened once, one bag per call.

A plain class (``ray.remote`` is applied by the driver), so everything here runs and is testable
without Ray. The model reaches a worker by its path when that path is readable there with the same
content (shared storage); otherwise its bytes come from Ray's object store, once per node, into
the node's cache folder (``$PEBAL_CACHE/fleet/``): the driver's export cache is usually not shared.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .done import FORMAT, MARKER, file_sizes, write_json_atomic
from .engine import FleetError
from .figures import bag_figures
from .storage import is_uri, stage

STARTED = ".started.json"     # in an attempt's folder: which worker runs it (for people and tests)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ModelShipment:
    path: str                 # the driver's file
    digest: str               # its sha256
    blob: list[Any]           # [ObjectRef of the bytes] (in a list: Ray passes it unresolved), or [bytes]


def local_model(ship: ModelShipment, fetch: Any = None) -> Path:
    """The model file to open on this node: the driver's path when it holds the same bytes, else a
    copy in this node's cache (written once, atomically)."""
    from ..paths import cache_dir

    path = Path(ship.path)
    try:
        if path.is_file() and sha256(path) == ship.digest:
            return path
    except OSError:
        pass
    target = cache_dir() / "fleet" / ship.digest[:16] / path.name
    if target.is_file() and sha256(target) == ship.digest:
        return target
    data = ship.blob[0] if fetch is None else fetch(ship.blob[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def _node() -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray
        if ray.is_initialized():     # (asking an uninitialised Ray would start one)
            info["node_id"] = ray.get_runtime_context().get_node_id()
            info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # noqa: BLE001 - outside Ray (tests): host and pid are enough
        pass
    return info


class FleetWorker:
    """Opens the model once; ``replay`` one bag into a temporary folder; ``calibrate`` one source."""

    def __init__(self, settings: Any, ship: ModelShipment, threads: int | None, unsafe: bool) -> None:
        from ..open_model import open_runtime

        if unsafe:     # a worker process does not inherit the command line's opt-in
            from ..models.checkpoint import allow_unsafe_pickle
            allow_unsafe_pickle(True)
        fetch = None
        try:
            import ray
            if ray.is_initialized():
                fetch = ray.get
        except ImportError:
            pass
        self.model = local_model(ship, fetch if not isinstance(ship.blob[0], bytes) else None)
        self.settings = settings
        self.runtime = open_runtime(settings, threads=threads, quiet=True, path=self.model)
        self.node = _node()

    def ready(self) -> dict[str, Any]:
        size = getattr(self.runtime, "input_size", None)
        return dict(self.node, model=str(self.model), input_size=list(size) if size else None)

    # -- replay -------------------------------------------------------------------------------
    def replay(self, bag: str, name: str, tmp: str, opts: Any, attempt: int, final: str | None = None,
               shown: str | None = None) -> dict[str, Any]:
        """Replay ``bag`` (an absolute path or a URI) into ``tmp`` (absolute) and write the record (the
        done marker) there, last. Every outcome is returned as a record: a bag that cannot be
        replayed is a result, not an error. ``final``: the folder the driver will move the results
        to; ``shown``: the bag as the user named it (the reports name those two, as a local replay's do)."""
        from ..replay.bag import BagError
        from ..replay.replay import ReplayError, replay_bag

        folder = Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.time()
        source, bag = bag, shown or bag
        write_json_atomic(folder / STARTED, dict(self.node, bag=bag, attempt=attempt, started=started))
        record: dict[str, Any] = {"format": FORMAT, "bag": bag, "name": name, "attempt": attempt,
                                  "worker": self.node, "started": started}
        scratch, local = None, source
        try:
            if is_uri(source):      # object storage: a copy on this node's disk, deleted afterwards
                scratch = Path(tempfile.mkdtemp(prefix="pebal_stage_"))
                local = str(stage(source, scratch))
            res = replay_bag(local, self.runtime, folder, opts)
        except (BagError, ReplayError) as exc:
            record.update(exit_code=1, error=str(exc).replace(local, bag))
        except FleetError as exc:
            record.update(exit_code=1, error=str(exc))
        except OSError as exc:     # unreadable input or unwritable output: this bag only
            where = exc.filename if exc.filename is not None else local
            record.update(exit_code=1, error=f"{str(where).replace(local, bag)}: {exc.strerror or exc}")
        else:
            relocate(res, folder, Path(final) if final is not None else folder, (local, bag))
            record.update(exit_code=res.exit_code, error=None,
                          figures=bag_figures(res.report_dir, res.summary))
            if res.accuracy is not None and res.accuracy.frames:
                save_state(folder / "ground_truth.npz", res.accuracy.state())
                record["ground_truth_state"] = "ground_truth.npz"
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        (folder / STARTED).unlink(missing_ok=True)
        record["finished"] = time.time()
        record["files"] = file_sizes(folder)
        write_json_atomic(folder / MARKER, record)
        return record

    # -- calibrate ------------------------------------------------------------------------------
    def calibrate(self, source: dict[str, Any], min_area: int) -> dict[str, Any]:
        """Score one calibration source (a bag, a chunk of images, or the labelled anomaly sets)
        with the one-machine code; returns the statistics' compact state and the skips."""
        from ..calibrate.cli import accumulate
        from ..calibrate.sources import LabelledFrames, NormalFrames, SourceError

        try:
            if source["kind"] == "labelled":
                normal: Any = _NoFrames()
                labelled = LabelledFrames(source["anomalies"], source["anomaly_images"], source["anomaly_labels"])
            else:
                normal = NormalFrames(source["inputs"], source["topics"], source["every"], None, False)
                labelled = LabelledFrames()
            # the same decode cap as the one-machine run (image files are read lazily)
            normal.max_pixels = labelled.max_pixels = self.settings.config.input.max_decoded_pixels
            stats = accumulate(self.runtime, normal, labelled, min_area, progress=False,
                               max_pixels=self.settings.config.input.max_decoded_pixels)
        except SourceError as exc:
            return {"error": str(exc)}
        return {"state": stats.state(), "normal_skips": dict(normal.skips.reasons),
                "labelled_skips": dict(labelled.skips.reasons), "used_topics": sorted(normal.used_topics),
                "labelled_frames": len(labelled) - labelled.skips.total}


class _NoFrames:
    """No normal frames (the task that scores the labelled anomaly sets)."""

    def __init__(self) -> None:
        from ..calibrate.sources import Skips

        self.skips, self.used_topics = Skips(), set()

    def estimate(self) -> int:
        return 0

    def __iter__(self) -> Any:
        return iter(())


def relocate(res: Any, tmp: Path, final: Path, bag: tuple[str, str]) -> None:
    """The report names the result bag where it will be after the commit, and the bag by the name
    it was given (a URI, not the staged copy), as a local replay's report does."""
    import html

    from ..replay import report as rep

    det = res.summary["deterministic"]
    swaps = []
    if det.get("result_bag") and Path(det["result_bag"]).is_relative_to(tmp) and tmp != final:
        det["result_bag"] = str(final / Path(det["result_bag"]).relative_to(tmp))
        swaps.append((str(tmp), str(final)))
    if bag[0] != bag[1]:
        det["bag"] = bag[1]
        swaps.append(bag)
    if not swaps:
        return
    rep.write_summary(res.report_dir, res.summary)
    page = res.report_dir / "report.html"
    if page.is_file():
        text = page.read_text(encoding="utf-8")
        for old, new in swaps:
            text = text.replace(html.escape(old), html.escape(new))
        page.write_text(text, encoding="utf-8")


def save_state(path: Path, state: dict[str, Any]) -> None:
    """A ground-truth accumulator's state as .npz (arrays as they are, the rest as JSON)."""
    import numpy as np

    arrays = {f"ood_{k}": v for k, v in state["ood"].items() if isinstance(v, np.ndarray)}
    arrays.update(seg_confusion=state["seg_confusion"], binary_conf=state["binary_conf"])
    meta = {"kind": state["kind"], "kinds_seen": state["kinds_seen"], "frames": state["frames"],
            "ood": {k: v for k, v in state["ood"].items() if not isinstance(v, np.ndarray)}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        ood = dict(meta["ood"], **{k[4:]: z[k] for k in z.files if k.startswith("ood_")})
        return {"kind": meta["kind"], "kinds_seen": meta["kinds_seen"], "frames": meta["frames"], "ood": ood,
                "seg_confusion": z["seg_confusion"], "binary_conf": z["binary_conf"]}
