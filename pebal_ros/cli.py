"""The ``pebal`` command: one entry point, one sub-command per job.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``
and a module docstring whose first line is the command's one-line help. Modules are imported only
when their command runs (or for ``--help``), so ``pebal replay`` never imports the training code.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path

# name -> module; order is the order shown in --help.
COMMANDS: dict[str, str] = {
    "demo": "pebal_ros.demo",
    "infer": "pebal_ros.infer",
    "replay": "pebal_ros.fleet.replay_cli",      # the one-machine command + --ray
    "calibrate": "pebal_ros.fleet.calibrate_cli",
    "evaluate": "pebal_ros.evaluate",
    "finetune": "pebal_ros.train.finetune",
    "train": "pebal_ros.train.pretrain",
    "make-synthetic": "pebal_ros.data.synthetic",
    "build-coco-ood": "pebal_ros.data.coco_ood",
    "build-objects": "pebal_ros.data.object_bank",
    "build-mixed-set": "pebal_ros.road.mixed_set",
    "build-demo-road": "pebal_ros.road.demo_clip",
    "build-road-cache": "pebal_ros.road.feature_cache",
    "finetune-cached": "pebal_ros.road.finetune",
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
    except Exception as exc:  # noqa: BLE001 - expected ones become one line, the rest keep the traceback
        known = error_message(exc, args)
        if known is None:
            raise
        message, code = known
        print(f"pebal {args.command}: {message}", file=sys.stderr)
        return code


# Errors that say what to change, by errno; the path they concern is printed before them.
_OS_HINTS = {
    errno.EACCES: "permission denied (choose a folder you can read/write, or fix its permissions)",
    errno.EPERM: "operation not permitted (choose a folder you can write to)",
    errno.EROFS: "read-only file system (choose a writable folder, e.g. with --out)",
    errno.ENOTDIR: "part of this path is a file, not a folder",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def _yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: what is wrong, in which file, where."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f"not valid YAML: {what}"
    return f"{mark.name} is not valid YAML: {what} (line {mark.line + 1}, column {mark.column + 1})"


def _in_cache(path: Path) -> bool:
    from .paths import cache_dir

    try:
        path.absolute().relative_to(cache_dir().absolute())
        return True
    except ValueError:
        return False


def error_message(exc: BaseException, args: argparse.Namespace | None = None) -> tuple[str, int] | None:
    """The one-line message and exit status for an error the user can fix; None for anything else
    (a bug: its traceback is more use than a sentence). Exit 2: a bad argument or configuration
    file; 1: the command could not read or write what it was given."""
    import yaml

    from .cache import CacheError

    config = getattr(args, "config", None)
    if isinstance(exc, CacheError):       # an unsafe cache folder: the message names it and the fix
        return str(exc), 2
    if isinstance(exc, yaml.YAMLError):
        return f"--config: {_yaml_problem(exc)}" if config else _yaml_problem(exc), 2
    if isinstance(exc, OSError):
        path = exc.filename
        reason = _OS_HINTS.get(exc.errno or -1) or exc.strerror or str(exc)
        if config and path is not None and Path(str(path)) == Path(config):
            return f"--config {config}: cannot read this configuration file: {exc.strerror or exc}", 2
        if path is None:
            return reason, 1
        where = f"{path} -> {exc.filename2}" if exc.filename2 else str(path)
        if _in_cache(Path(str(path))):
            reason += " (this is the user cache folder for model exports; set PEBAL_CACHE to a writable one)"
        return f"{where}: {reason}", 1
    return None


if __name__ == "__main__":
    sys.exit(main())
