"""Every flag and argument of every `pebal` sub-command says what it is for in --help."""
from __future__ import annotations

import argparse

from pebal_ros.cli import COMMANDS, build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_argument_of_every_command_has_help_text():
    commands = _subparsers(build_parser())
    assert set(commands) == set(COMMANDS)
    missing = []
    for name, sub in commands.items():
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        assert actions, name
        for a in actions:
            text = (a.help or "").strip()
            if not text or text == argparse.SUPPRESS:
                missing.append(f"pebal {name} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, "arguments without help text: " + ", ".join(missing)
