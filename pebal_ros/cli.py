"""The ``pebal`` command: one entry point, one sub-command per job.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``
and a module docstring whose first line is the command's one-line help. Modules are imported only
when their command runs (or for ``--help``), so ``pebal replay`` never imports the training code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "demo": "pebal_ros.demo",
    "infer": "pebal_ros.infer",
    "replay": "pebal_ros.replay.cli",
    "evaluate": "pebal_ros.evaluate",
    "finetune": "pebal_ros.train.finetune",
    "train": "pebal_ros.train.pretrain",
    "make-synthetic": "pebal_ros.data.synthetic",
    "build-coco-ood": "pebal_ros.data.coco_ood",
    "export": "pebal_ros.export.onnx",
    "build-engine": "pebal_ros.export.tensorrt",
}


def _summary(module) -> str:
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pebal",
        description="PEBAL road-anomaly segmentation: train, evaluate, export, replay rosbags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help="")
            continue
        module = importlib.import_module(modname)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=_summary(module), description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the chosen command's module unless the user asks for the overview.
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    if getattr(args, "unsafe_load_pickle", False):
        # Process-wide and CLI-only: the ROS node has no way to turn this on.
        from .models.checkpoint import allow_unsafe_pickle
        allow_unsafe_pickle(True)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
