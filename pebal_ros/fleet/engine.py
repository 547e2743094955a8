"""Ray, only here: the import (with the install hint), the connection, and a pool of actors that
runs tasks with retries on lost workers.

Fault model. A task that *returns* is a result, whatever it says (a corrupt bag returns its failure):
it is never retried. A task whose actor dies (node removed, worker process killed, out of memory)
is re-queued, up to ``retries`` more times, and the dead actor is replaced; a replacement that the
cluster cannot place stays pending while the live actors drain the queue. An exception raised by the
task's own code (a bug, not a lost worker) is a result too: reported, not retried. An actor whose
constructor fails (the model cannot be opened) stops the run: every worker would fail the same way.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

INSTALL_HINT = "pip install 'pebal_ros[ray]'"
WAIT_NOTE_S = 120.0       # no worker started yet after this long: tell the user why the run waits


class FleetError(RuntimeError):
    """The fleet cannot run (no Ray, no cluster, workers cannot start); the message says why."""


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FleetError(f"--ray needs Ray, which is not installed here ({exc}); install it with "
                         f"{INSTALL_HINT}") from None
    return ray


@dataclass
class Connection:
    ray: Any
    address: str
    owned: bool          # this process called ray.init (and shuts it down at the end)
    resources: dict[str, float]
    nodes: int

    def describe(self) -> str:
        cpus, gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        return (f"Ray cluster {self.address}: {self.nodes} node(s), {cpus:g} CPU(s)"
                + (f", {gpus:g} GPU(s)" if gpus else ""))

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()


def connect(address: str | None) -> Connection:
    """``address`` '' or None: the cluster this machine belongs to (RAY_ADDRESS, or one started here
    with ``ray start``), else a new local one; 'auto': an existing cluster only; host:port or
    ray://host:port: that cluster. Already connected (a test, a notebook): that connection."""
    ray = import_ray()
    if ray.is_initialized():
        return _connection(ray, owned=False)
    # Usage statistics stay off unless the user turned them on for their cluster.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        # No address: join this machine's cluster if there is one, else start a local one, small
        # and without the dashboard (it is the --jobs use case on Ray; a real cluster has its own).
        kwargs["include_dashboard"] = False
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = ("; is it running and reachable from here? (a cluster with token authentication also needs "
                "RAY_AUTH_MODE=token and its token: RAY_AUTH_TOKEN or ~/.ray/auth_token)") if address else ""
        raise FleetError(f"cannot connect to the Ray cluster at {address or 'auto'}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}{hint}") from None
    return _connection(ray, owned=True)


def _connection(ray: Any, owned: bool) -> Connection:
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - only for the message
        address = "?"
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Connection(ray, str(address), owned, dict(ray.cluster_resources()), nodes)


def worker_count(resources: dict[str, float], cpus: float, gpus: float, wanted: int | None, tasks: int) -> int:
    """Actors to start: ``wanted``, else as many as the cluster's CPUs (or GPUs) hold; never more
    than there are tasks, at least one."""
    if wanted:
        n = wanted
    elif gpus > 0:
        n = int(resources.get("GPU", 0) // gpus)
    else:
        n = int(resources.get("CPU", 0) // max(cpus, 1e-9))
    return max(1, min(n, tasks))


@dataclass
class Task:
    key: int                 # position in the driver's list
    payload: Any
    attempts: int = 0        # calls that ended with a lost worker
    errors: list[str] = field(default_factory=list)


@dataclass
class _Slot:
    actor: Any
    ready: Any = None        # ObjectRef of the start-up call while starting
    info: dict[str, Any] = field(default_factory=dict)


class ActorPool:
    """Runs ``call(actor, task)`` for every task on a pool of ``size`` actors made by ``make()``.

    ``on_result(task, value)`` gets each returned value (on the driver, in completion order);
    ``on_lost(task, attempt_error)`` is told about each lost worker (the driver cleans that attempt's
    temporary files); tasks that lost their worker ``retries + 1`` times are given to
    ``on_given_up(task)``. ``patience_s``: how long to wait with no worker alive before giving up
    on the remaining tasks.
    """

    def __init__(self, ray: Any, make: Callable[[], Any], size: int, retries: int = 3,
                 patience_s: float = 1800.0) -> None:
        self.ray, self.make, self.size, self.retries, self.patience_s = ray, make, size, retries, patience_s
        self.slots: list[_Slot] = []

    def _start(self) -> _Slot:
        actor = self.make()
        slot = _Slot(actor, actor.ready.remote())
        self.slots.append(slot)
        return slot

    def _drop(self, slot: _Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def shutdown(self) -> None:
        for slot in list(self.slots):
            self._drop(slot)

    def run(self, tasks: Iterable[Task], call: Callable[[Any, Task], Any],
            on_result: Callable[[Task, Any], None], on_lost: Callable[[Task, str], None],
            on_given_up: Callable[[Task], None]) -> None:
        from ray.exceptions import RayActorError, RayError, RayTaskError

        queue = deque(tasks)
        starting: dict[Any, _Slot] = {}
        for _ in range(self.size):
            s = self._start()
            starting[s.ready] = s
        idle: deque[_Slot] = deque()
        running: dict[Any, tuple[_Slot, Task]] = {}
        since_alive = time.monotonic()
        told = False
        while queue or running:
            if not told and not running and not idle and time.monotonic() - since_alive > WAIT_NOTE_S:
                told = True    # the cluster may be scaling up, or has no room for a worker: say so
                print(f"pebal: no worker has been running for {WAIT_NOTE_S:.0f} s; waiting up to "
                      f"{self.patience_s:.0f} s (does the cluster have a free node with the CPUs/GPUs a "
                      "worker asks for? see --ray-cpus / --ray-gpus, `ray status`)", file=sys.stderr, flush=True)
            while idle and queue:
                slot, task = idle.popleft(), queue.popleft()
                running[call(slot.actor, task)] = (slot, task)
            refs = list(running) + list(starting)
            if not running and not idle:
                if time.monotonic() - since_alive > self.patience_s:
                    for task in queue:
                        task.errors.append(f"no worker could be started for {self.patience_s:.0f} s "
                                           "(the cluster has no free CPU/GPU for one?)")
                        on_given_up(task)
                    return
            else:
                since_alive = time.monotonic()
            if not refs:          # every actor lost and none starting: start replacements
                for _ in range(self.size):
                    s = self._start()
                    starting[s.ready] = s
                continue
            done, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
            if not done:
                continue
            ref = done[0]
            if ref in starting:
                slot = starting.pop(ref)
                try:
                    slot.info = self.ray.get(ref)
                except RayActorError as exc:
                    self._drop(slot)
                    if exc.actor_init_failed:
                        raise FleetError(f"a worker cannot start: {_first_line(exc)}") from None
                    # its node went away while it started: try again
                    s = self._start()
                    starting[s.ready] = s
                    continue
                except RayError as exc:
                    self._drop(slot)
                    raise FleetError(f"a worker cannot start: {_first_line(exc)}") from None
                slot.ready = None
                idle.append(slot)
                continue
            slot, task = running.pop(ref)
            try:
                value = self.ray.get(ref)
            except RayTaskError as exc:          # the task's own code raised: a result, not retried
                task.errors.append(f"worker error: {_first_line(exc)}")
                on_given_up(task)
                idle.append(slot)
                continue
            except RayError as exc:              # the worker is gone: retry the task elsewhere
                self._drop(slot)
                task.attempts += 1
                why = f"worker lost ({type(exc).__name__}: {_first_line(exc)})"
                task.errors.append(why)
                on_lost(task, why)
                if task.attempts <= self.retries:
                    queue.appendleft(task)
                else:
                    on_given_up(task)
                s = self._start()
                starting[s.ready] = s
                continue
            on_result(task, value)
            idle.append(slot)


def _first_line(exc: BaseException) -> str:
    """Ray's errors carry the remote traceback; the user gets its last meaningful line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and str(cause):
        text = f"{type(cause).__name__}: {cause}"
    else:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        text = lines[-1] if lines else type(exc).__name__
    return text[:300]
