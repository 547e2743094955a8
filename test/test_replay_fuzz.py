"""A small seeded fuzzer over damaged recordings: every case ends in messages read (and accounted
for) or in one clear BagError/ReplayError line, never in another exception.

Seeds are real bytes: ROS 2's own test bags in ../shared/data/rosbag2 (MCAP and sqlite3, when
present) and camera recordings written here (MCAP plain, MCAP with zstd per message, MCAP zstd per
file, sqlite3). Mutations: storage bytes flipped, cut, overwritten, zeroed, dropped or inserted;
metadata.yaml keys renamed, values given another type, text truncated or lines dropped, the file
deleted; and both at once. The reading side is what ``replay_bag`` does with a bag before the
network runs (open, choose topics, build the typestore, stream and decode every message); a few
cases also go through ``replay_bag`` itself, end to end.
"""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from test_replay_helpers import frames, tiny_onnx

from pebal_ros.replay.bag import BagError, BagReader, make_typestore
from pebal_ros.replay.recording import write_recording
from pebal_ros.replay.replay import ReplayError, ReplayOptions, replay_bag, select_topics

CASES = 240
END_TO_END = 6
SEED = 20240517


def _seeds(root: Path, shared: Path | None) -> list[Path]:
    out = []
    for name, kw in {"cam_mcap": {}, "cam_zmsg": {"compression": "message"},
                     "cam_zfile": {"compression": "file"}, "cam_sqlite": {"storage": "sqlite3"}}.items():
        write_recording(root / name, frames(3, size=(32, 48)), **kw)
        out.append(root / name)
    if shared is not None:
        for name in ("talker_mcap", "talker_sqlite3", "cdr_test_mcap"):
            if (shared / "rosbag2" / name).is_dir():
                shutil.copytree(shared / "rosbag2" / name, root / name)
                out.append(root / name)
    for bag in out:
        for f in bag.iterdir():
            f.chmod(0o644)
    return out


def _mutate_bytes(rng: np.random.Generator, data: bytes) -> tuple[bytes, str]:
    n = len(data)
    at = int(rng.integers(0, n))
    span = int(rng.integers(1, 64))
    kind = rng.choice(["flip", "cut", "garble", "zero", "drop", "insert"])
    b = bytearray(data)
    if kind == "flip":
        for i in rng.integers(0, n, int(rng.integers(1, 9))):
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "cut":
        del b[at:]
    elif kind == "garble":
        b[at:at + span] = rng.integers(0, 256, len(b[at:at + span]), dtype=np.uint8).tobytes()
    elif kind == "zero":
        b[at:at + span] = bytes(len(b[at:at + span]))
    elif kind == "drop":
        del b[at:at + span]
    else:
        b[at:at] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
    return bytes(b), f"{kind}@{at}"


VALUES = ["[1, 2]", "{a: 1}", "'text'", "12", "-5", "true", "null", "''", "99999999999999999999",
          "[]", "{}", "1.5", "[[[]]]", "'../../../etc/passwd'"]


def _mutate_yaml(rng: np.random.Generator, text: str) -> tuple[str | None, str]:
    kind = rng.choice(["rename", "retype", "truncate", "drop_lines", "delete"])
    keys = list(re.finditer(r"([A-Za-z_]+):", text))
    if kind == "rename" and keys:
        m = keys[int(rng.integers(0, len(keys)))]
        return text[:m.start(1)] + m.group(1)[:-1] + "x" + text[m.end(1):], f"rename {m.group(1)}"
    if kind == "retype" and keys:
        m = keys[int(rng.integers(0, len(keys)))]
        end = text.find("\n", m.end())
        value = VALUES[int(rng.integers(0, len(VALUES)))]
        return text[:m.end()] + " " + value + (text[end:] if end >= 0 else ""), f"retype {m.group(1)}={value}"
    if kind == "truncate":
        cut = int(rng.integers(0, len(text)))
        return text[:cut], f"truncate@{cut}"
    if kind == "drop_lines":
        lines = text.splitlines(keepends=True)
        drop = set(rng.integers(0, len(lines), int(rng.integers(1, 4))).tolist())
        return "".join(x for i, x in enumerate(lines) if i not in drop), f"drop lines {sorted(drop)}"
    return None, "delete metadata.yaml"


def _case(rng: np.random.Generator, seeds: list[Path], dest: Path) -> str:
    src = seeds[int(rng.integers(0, len(seeds)))]
    shutil.copytree(src, dest)
    what = [src.name]
    target = rng.choice(["storage", "metadata", "both"])
    if target in ("storage", "both"):
        files = sorted(p for p in dest.iterdir() if p.name != "metadata.yaml")
        f = files[int(rng.integers(0, len(files)))]
        data, how = _mutate_bytes(rng, f.read_bytes())
        f.write_bytes(data)
        what.append(f"{f.name}: {how}")
    if target in ("metadata", "both"):
        meta = dest / "metadata.yaml"
        text, how = _mutate_yaml(rng, meta.read_text())
        if text is None:
            meta.unlink()
        else:
            meta.write_text(text)
        what.append(f"metadata.yaml: {how}")
    return "; ".join(what)


def _read_like_replay(bag: Path) -> int:
    """Everything replay_bag does with the bag's bytes before the network; messages decoded."""
    opts = ReplayOptions()
    decoded = 0
    with BagReader(bag) as reader:
        cams, label = select_topics(reader, opts)
        store = make_typestore(reader.topics.values())
        names = {t.name for t in cams} | ({label.name} if label else set())
        for raw in reader.messages():
            if raw.topic in names:
                try:       # replay_bag catches this per frame and records the reason
                    store.deserialize_cdr(raw.data, raw.msgtype)
                    decoded += 1
                except Exception:  # noqa: BLE001
                    pass
        for t in reader.topics.values():    # what the summary computes from the metadata
            assert t.declared is None or isinstance(t.declared, int)
        assert all("\n" not in str(i) for i in reader.issues)
    return decoded


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from conftest import SHARED_DATA
    return _seeds(tmp_path_factory.mktemp("seeds"), SHARED_DATA if SHARED_DATA.is_dir() else None)


def test_fuzzed_bags_read_or_fail_with_one_line(seeds: list[Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    outcomes = {"read": 0, "BagError": 0, "ReplayError": 0}
    t0 = time.perf_counter()
    for i in range(CASES):
        bag = tmp_path / f"case{i}"
        what = _case(rng, seeds, bag)
        try:
            _read_like_replay(bag)
            outcomes["read"] += 1
        except (BagError, ReplayError) as exc:
            assert "\n" not in str(exc) and str(exc), f"case {i} ({what}): not one line: {exc!r}"
            outcomes[type(exc).__name__] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {i} ({what}): {type(exc).__name__}: {exc}")
        shutil.rmtree(bag)
    # The fuzzer must reach both outcomes, or it tests nothing.
    assert outcomes["read"] > CASES // 3 and outcomes["BagError"] + outcomes["ReplayError"] > 0, outcomes
    print(f"{CASES} cases in {time.perf_counter() - t0:.1f} s: {outcomes}")


def test_fuzzed_bags_end_to_end(seeds: list[Path], tmp_path: Path) -> None:
    """A few damaged camera recordings through replay_bag itself: a result or BagError/ReplayError."""
    from pebal_ros.replay.bag import BagError as _BagError
    from pebal_ros.runtime import load_runtime

    runtime = load_runtime(tiny_onnx(tmp_path / "tiny.onnx"), device="cpu")
    rng = np.random.default_rng(SEED + 1)
    cams = [s for s in seeds if s.name.startswith("cam_")]
    for i in range(END_TO_END):
        bag = tmp_path / f"case{i}"
        what = _case(rng, cams, bag)
        try:
            res = replay_bag(bag, runtime, tmp_path / f"out{i}", ReplayOptions(
                threshold=-4.0, progress=False, outputs=("status",)))
        except (_BagError, ReplayError) as exc:
            assert "\n" not in str(exc), f"case {i} ({what}): {exc!r}"
            continue
        det = res.summary["deterministic"]
        assert det["frames"]["read"] == det["frames"]["processed"] + det["frames"]["skipped"], what
        assert res.exit_code == (0 if det["frames"]["processed"] else 1), what
