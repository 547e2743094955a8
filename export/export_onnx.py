#!/usr/bin/env python3
"""Thin wrapper: same as `pebal export ...` (works from a source checkout without installing)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pebal_ros.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
