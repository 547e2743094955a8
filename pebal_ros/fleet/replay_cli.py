"""``pebal replay``: the one-machine command (pebal_ros.replay.cli) plus ``--ray`` for a fleet."""
from __future__ import annotations

import argparse
import sys

from ..replay import cli as _local
from .options import add_ray_arguments, check_ray_arguments

__doc__ = (_local.__doc__ or "") + """
A fleet on a Ray cluster (pip install 'pebal_ros[ray]'):
  pebal replay /shared/recordings --out /shared/results --ray            # this machine's cluster, or a local one
  pebal replay /shared/recordings --out /shared/results --ray head:6379 --device cuda
  pebal replay /shared/recordings --out /shared/results --ray --resume   # after an interruption: only the rest
  pebal replay s3://bucket/recordings --out /shared/results --ray        # bags read through pyarrow's file systems
Each bag's results are written under --out exactly as above, with a done marker (fleet.json) last;
--out/index.html is the fleet report (per-bag table, pooled figures and ground-truth metrics, worst frames).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    _local.add_arguments(p)
    add_ray_arguments(p, resume=True)


def main(args: argparse.Namespace) -> int:
    problem = check_ray_arguments(args, "pebal replay")
    if problem:
        print(f"pebal replay: {problem}", file=sys.stderr)
        return 2
    if args.ray is None:
        return _local.main(args)
    from .engine import FleetError, import_ray
    try:
        import_ray()          # before the model is loaded: a missing extra is a one-line answer
    except FleetError as exc:
        print(f"pebal replay: {exc}", file=sys.stderr)
        return 2
    from .replay import run
    return run(args)
