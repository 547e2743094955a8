"""YAML from places a user or an attacker controls, read with bounded cost.

``yaml.safe_load`` refuses Python objects but not cost: a 600-byte file of nested aliases (the
"billion laughs") loads instantly as a small graph of shared lists, and then costs minutes and
gigabytes in whatever walks or prints it (a config check, an error message quoting the value).
Every YAML file pebal_ros reads from a user-controlled place (``--config``, presets, calibration
records, bag ``metadata.yaml``) goes through :func:`load_file` / :func:`load_text`, which
bound the input size and the number of nodes the document has once its aliases are expanded
(merge keys ``<<`` included), and refuse recursive aliases. Legitimate files are far below both
limits, so the only visible change is a one-line error instead of a hang.

The errors are :class:`yaml.YAMLError` subclasses: callers that already report malformed YAML in
one line report these the same way.
"""
from __future__ import annotations

import io
import os
from typing import Any

import yaml

MAX_BYTES = 1 << 20          # 1 MiB: a config, a calibration record, a bag's metadata.yaml
MAX_NODES = 100_000          # scalars + collections after alias expansion


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML document over the size or alias-expansion limits (``problem`` says which)."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem=problem, problem_mark=mark)

    def __str__(self) -> str:
        where = f" ({self.problem_mark.name}, line {self.problem_mark.line + 1})" if self.problem_mark else ""
        return f"{self.problem}{where}"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that weighs every composed node by its expanded size and stops at the limit."""

    def __init__(self, stream: Any, max_nodes: int):
        super().__init__(stream)
        self._max_nodes = max_nodes
        self._weight: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)     # the anchored node, weighed when composed
            if id(node) not in self._weight:               # still being composed: it contains itself
                raise YAMLLimitError("a recursive alias (a collection containing itself); refused", mark)
            return node
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.ScalarNode):
            weight = 1
        elif isinstance(node, yaml.SequenceNode):
            weight = 1 + sum(self._weight[id(child)] for child in node.value)
        else:
            weight = 1 + sum(self._weight[id(k)] + self._weight[id(v)] for k, v in node.value)
        if weight > self._max_nodes:
            raise YAMLLimitError(f"more than {self._max_nodes} nodes once its aliases are expanded "
                                 "(an alias bomb?); refused", node.start_mark)
        self._weight[id(node)] = weight
        return node


def load_text(text: str | bytes, name: str = "<string>", *, max_bytes: int = MAX_BYTES,
              max_nodes: int = MAX_NODES) -> Any:
    """The YAML document in ``text`` (safe types only), within the limits; raises yaml.YAMLError."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise YAMLLimitError(f"{name} is larger than {max_bytes} bytes; refused")
    stream = io.BytesIO(data)
    stream.name = name          # marks (line numbers in errors) name the file
    loader = _BoundedLoader(stream, max_nodes)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_file(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> Any:
    """The YAML document in file ``path``, reading at most ``max_bytes`` + 1 bytes of it.

    Raises OSError (cannot read) or yaml.YAMLError (malformed, or over a limit)."""
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YAMLLimitError(f"{os.fspath(path)} is larger than {max_bytes} bytes; refused")
    return load_text(data, os.fspath(path), max_bytes=max_bytes, max_nodes=max_nodes)
