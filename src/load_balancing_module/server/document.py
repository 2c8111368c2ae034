"""Reading a config document (YAML or TOML) within bounds, so that no file can crash or stall us.

A config file comes from the operator, but a mistake or a hostile template must still end in one
clear line, not a traceback, a MemoryError or a minute of parsing. YAML makes that easy to get
wrong: an alias costs nothing to parse, but every walk of the result (``${ENV}`` expansion,
validation) follows it again, so nine nested aliases of nine ("billion laughs") are a billion
strings to walk. So:

- the file may be at most :data:`MAX_BYTES` long;
- nesting may go :data:`MAX_DEPTH` levels deep (collections inside collections);
- at most :data:`MAX_ALIASES` aliases (``*name``) may appear, and what they copy may add up to
  at most :data:`MAX_COPIED_NODES` nodes, counted as they are parsed, before anything is built
  from them (72 aliases are enough for a billion laughs: the count alone is not a bound);
- a key repeated in one mapping is an error naming the key and its line (YAML says keys are
  unique; PyYAML would keep the last one silently). Keys merged in with ``<<`` may still be
  overridden, as YAML intends.

Any problem raises :class:`DocumentError` with a one-line message.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES: Final = 4 * 1024 * 1024  # a 1,000-backend file is about 60 KB
MAX_DEPTH: Final = 64
MAX_ALIASES: Final = 100
MAX_COPIED_NODES: Final = 10_000  # a template copied 100 times is a few thousand


class DocumentError(ValueError):
    """A document that cannot be read within the bounds; the message is one line."""


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting depth and aliases as it composes, refusing duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._copied = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes in it, for nodes that an alias copied

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise DocumentError(
                    f"line {mark.line + 1}: more than {MAX_ALIASES} aliases (*name); "
                    "a config file needs few, and each costs as much as what it copies"
                )
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            if node is not None:
                self._copied += self._size(node)
                if self._copied > MAX_COPIED_NODES:
                    raise DocumentError(
                        f"line {mark.line + 1}: aliases copy more than {MAX_COPIED_NODES} nodes in all (an alias bomb?)"
                    )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise DocumentError(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _size(self, node: Node) -> int:
        """Nodes in ``node``, aliases expanded (memoised: shared nodes are counted once each)."""
        known = self._sizes.get(id(node))
        if known is None:
            if isinstance(node, MappingNode):
                known = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            elif isinstance(node, SequenceNode):
                known = 1 + sum(self._size(item) for item in node.value)
            else:
                known = 1
            self._sizes[id(node)] = known
        return known

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden, as YAML intends
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own check reports it
                continue
            if first is not None:
                raise DocumentError(f"line {line}: duplicate key {key!r} (first at line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_document(path: Path) -> Any:
    """The parsed document at ``path``; :class:`DocumentError` (or ``OSError``) if it cannot be."""
    with path.open("rb") as file:
        raw = file.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise DocumentError(f"larger than {MAX_BYTES // (1024 * 1024)} MiB; a config file is far smaller")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".toml":
        return _toml(text)
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except DocumentError:
        raise
    except (yaml.YAMLError, RecursionError) as exc:
        raise DocumentError(_one_line(exc)) from None
    finally:
        loader.dispose()


def _toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        document = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise DocumentError(_one_line(exc)) from None
    _check_depth(document, 1)
    return document


def _check_depth(value: Any, depth: int) -> None:
    if isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:
            raise DocumentError(f"nested more than {MAX_DEPTH} levels deep")
        for item in value.values() if isinstance(value, dict) else value:
            _check_depth(item, depth + 1)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(str(exc.problem or exc.context or "").split())
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    if isinstance(exc, RecursionError):
        return "nested too deep to read"
    return " ".join(str(exc).split())
