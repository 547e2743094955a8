"""Loading a model in the background, ROS-free, so the node keeps serving while it loads.

A reload (``model``, ``runtime``, ... parameters) can take tens of seconds: a checkpoint is
exported to ONNX first, a TensorRT engine is built. Run on the executor thread, that silenced the
node completely (no status, no /diagnostics, no parameter service). :class:`BackgroundLoader`
runs one load at a time on its own thread; the old model keeps serving, and the node swaps the
result in, in one step, when the loader says it is done (on the executor thread: ``on_done`` only
wakes it). :func:`quick_model_check` is the part of a load that is cheap enough to answer the
parameter request with (a missing file is refused at once, not after the fact).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..textcap import capped


@dataclass
class LoadResult:
    request: Any            # what was asked for (the node: the parameter values to run with)
    value: Any = None       # what the build returned, when it succeeded
    error: str = ""         # one line, when it failed
    seconds: float = 0.0


class LoaderBusy(RuntimeError):
    """A load is still running (or its result was not taken yet)."""


class BackgroundLoader:
    """One background load at a time; its result waits for :meth:`take`.

    ``on_done()`` is called from the loader thread once the result is ready (the node triggers a
    guard condition with it, so the swap happens on its executor thread)."""

    def __init__(self, on_done: Callable[[], None] | None = None):
        self._on_done = on_done
        self._lock = threading.Lock()
        self._what = ""
        self._since = 0.0
        self._result: LoadResult | None = None
        self._thread: threading.Thread | None = None

    def start(self, what: str, request: Any, build: Callable[[], Any]) -> None:
        """Run ``build()`` on a new thread; ``what`` names the load for reports (e.g. the model path)."""
        with self._lock:
            if self._what:
                raise LoaderBusy(f"still loading {self._what} ({time.monotonic() - self._since:.0f} s so far)")
            self._what, self._since, self._result = capped(what), time.monotonic(), None
            self._thread = threading.Thread(target=self._run, args=(request, build), name="pebal_loader",
                                             daemon=True)
            self._thread.start()

    def _run(self, request: Any, build: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        try:
            result = LoadResult(request, value=build())
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the old model kept
            result = LoadResult(request, error=capped(exc) or type(exc).__name__)
        result.seconds = time.monotonic() - t0
        with self._lock:
            self._result = result
        if self._on_done is not None:
            self._on_done()

    def take(self) -> LoadResult | None:
        """The finished load's result (once), else None; the loader is free again after it."""
        with self._lock:
            result, self._result = self._result, None
            if result is not None:
                self._what = ""
            return result

    @property
    def loading(self) -> str:
        """'<what> (<seconds> s)' while a load runs or waits to be taken, else ''."""
        with self._lock:
            return f"{self._what} ({time.monotonic() - self._since:.0f} s)" if self._what else ""

    @property
    def busy(self) -> bool:
        """The loader thread is still working (the process must not wait for it at exit)."""
        t = self._thread
        return t is not None and t.is_alive()


def quick_model_check(model: str, bundled: Callable[[], Path]) -> str | None:
    """Why ``model`` ("" = ``bundled()``) cannot be loaded, from what is cheap to know (the file
    exists and its suffix names a format), or None; the rest is found by the load itself."""
    from ..model_info import ModelFileError, model_format

    try:
        path = Path(model) if model else bundled()
    except FileNotFoundError as exc:
        return capped(exc)
    try:
        found = path.is_file()
    except OSError as exc:   # e.g. a name too long for the file system
        return f"model file {capped(path)}: {exc.strerror}"
    if not found:
        return f"model file not found: {capped(path)}"
    try:
        model_format(path)
    except ModelFileError as exc:
        return capped(exc)
    return None
