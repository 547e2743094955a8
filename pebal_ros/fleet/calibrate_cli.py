"""``pebal calibrate``: the one-machine command (pebal_ros.calibrate.cli) plus ``--ray``."""
from __future__ import annotations

import argparse
import sys

from ..calibrate import cli as _local
from .options import add_ray_arguments, check_ray_arguments

__doc__ = (_local.__doc__ or "") + """
On a Ray cluster (pip install 'pebal_ros[ray]'): the bags are scored in parallel and their score
histograms merged exactly, so the threshold is the single-process one:
  pebal calibrate /shared/normal/*.mcap --model /shared/m.onnx --ray
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    _local.add_arguments(p)
    add_ray_arguments(p, resume=False)


def main(args: argparse.Namespace) -> int:
    problem = check_ray_arguments(args, "pebal calibrate")
    if problem is None and args.ray is not None and args.max_frames is not None:
        problem = ("--max-frames takes the first N frames in input order, which bags scored in parallel "
                   "cannot know; thin the frames with --every instead")
    if problem:
        print(f"pebal calibrate: {problem}", file=sys.stderr)
        return 2
    if args.ray is None:
        return _local.main(args)
    from .engine import FleetError, import_ray
    try:
        import_ray()
    except FleetError as exc:
        print(f"pebal calibrate: {exc}", file=sys.stderr)
        return 2
    from .calibrate import fleet_scorer
    return _local.main(args, score=fleet_scorer(args))
