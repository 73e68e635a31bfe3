"""Reading a spec's YAML safely: bounded work, plain data, and where every value was written.

A spec is untrusted, so reading it must cost no more than its size and must never end in a
traceback. PyYAML's own loading does neither: an alias bomb expands exponentially, deep
nesting exhausts the recursion limit, explicit tags (``!!timestamp``) construct objects that
later stages do not expect and huge integers overflow. Here the text is read in two passes:

1. the *event* stream (PyYAML's parser is a state machine, not recursive) is scanned for
   nesting depth, explicit tags and aliases that refer to an enclosing node, keeping the key
   path of the current position so that even a syntax error names its KEY;
2. the composed node graph is turned into plain Python data by a walk that counts nodes with
   aliases expanded (so an alias bomb stops at ``yaml_nodes``), accepts only strings, numbers,
   booleans, null, lists and mappings with string keys, and records each value's position.

Every problem is one `SpecError` with file, line, column and key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from foldgen import naming
from foldgen.errors import SpecError, shown
from foldgen.limits import Limits

__all__ = ["Document", "Path", "read_yaml"]

Path = tuple[str | int, ...]
"""A location in the spec: mapping keys and list indices, e.g. ``("constraints", 0)``."""

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null")}
_MERGE = f"{_TAG}merge"


@dataclass
class Document:
    """Plain data read from YAML, with the position of every value and mapping key."""

    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict)


def read_yaml(text: str, file: str, limits: Limits) -> Document:
    """The single YAML document of ``text`` as plain data; any problem is a located SpecError."""
    _scan(text, file, limits)
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as err:
            raise _yaml_error(err, text, file, None) from None
        document = Document(None)
        if node is not None:
            document.data = _Builder(loader, file, limits, document).visit(node, (), 1)
        return document
    finally:
        loader.dispose()


def position(mark: yaml.Mark) -> tuple[int, int]:
    """A PyYAML mark as a 1-based (line, column)."""
    return mark.line + 1, mark.column + 1


@dataclass
class _Frame:
    """An open collection while scanning events: its path and where it is in its entries."""

    mapping: bool
    path: Path
    anchor: str | None
    key: str | int | None = None
    expect_key: bool = True
    index: int = 0

    def here(self) -> Path:
        """The path of the entry being read (for messages)."""
        if self.mapping:
            return self.path if self.expect_key or self.key is None else (*self.path, self.key)
        return (*self.path, self.index - 1) if self.index else self.path


def _scan(text: str, file: str, limits: Limits) -> None:
    """Depth, tags and self-referring aliases, checked on the event stream (no recursion)."""
    try:
        loader = yaml.SafeLoader(text)  # the reader checks every character here
    except yaml.YAMLError as err:
        raise _yaml_error(err, text, file, None) from None
    stack: list[_Frame] = []

    def fail(message: str, mark: yaml.Mark, path: Path) -> SpecError:
        line, col = position(mark)
        return SpecError(message, file=file, line=line, col=col, key=naming.key_path(path) or None)

    try:
        while True:
            try:
                event = loader.get_event()
            except yaml.YAMLError as err:
                raise _yaml_error(err, text, file, stack[-1].here() if stack else None) from None
            except RecursionError:  # pragma: no cover - the parser does not recurse
                raise fail("the YAML is nested too deeply", loader.peek_token().start_mark, ())
            if event is None or isinstance(event, yaml.StreamEndEvent):
                return
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            path = _node_path(stack, event)
            if isinstance(event, yaml.AliasEvent):
                if any(frame.anchor == event.anchor for frame in stack):
                    raise fail(
                        "an alias refers to a node that contains it", event.start_mark, path
                    )
                continue
            tag = getattr(event, "tag", None)
            if tag not in (None, "!"):
                raise fail(
                    f"YAML tags such as {shown(_short_tag(tag), 40)} are not supported; write the value "
                    "plainly (quote it if it is text)",
                    event.start_mark,
                    path,
                )
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append(_Frame(isinstance(event, yaml.MappingStartEvent), path, event.anchor))
                if len(stack) > limits.yaml_depth:
                    raise fail(
                        f"the YAML is nested more than {limits.yaml_depth} levels deep; "
                        + limits.raise_hint("yaml_depth"),
                        event.start_mark,
                        path,
                    )
    finally:
        loader.dispose()


def _node_path(stack: list[_Frame], event: yaml.NodeEvent) -> Path:
    """The path of the node that ``event`` starts, advancing the enclosing frame."""
    if not stack:
        return ()
    top = stack[-1]
    if top.mapping:
        if top.expect_key:
            top.expect_key = False
            top.key = event.value if isinstance(event, yaml.ScalarEvent) else "?"
            return top.path  # a key is reported at its mapping
        top.expect_key = True
        return (*top.path, top.key) if top.key is not None else top.path
    top.index += 1
    return (*top.path, top.index - 1)


class _Builder:
    """Composed nodes → plain data, counting nodes with aliases expanded."""

    def __init__(self, loader: yaml.SafeLoader, file: str, limits: Limits, document: Document):
        self.loader = loader
        self.file = file
        self.limits = limits
        self.document = document
        self.count = 0
        self.resolved: dict[int, list[tuple[str, yaml.Node, yaml.Node]]] = {}

    def error(self, message: str, mark: yaml.Mark, path: Path) -> SpecError:
        line, col = position(mark)
        return SpecError(
            message, file=self.file, line=line, col=col, key=naming.key_path(path) or None
        )

    def visit(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.count += 1
        if self.count > self.limits.yaml_nodes:
            raise self.error(
                f"the YAML expands to more than {self.limits.yaml_nodes} values (aliases "
                "count each time they are used); " + self.limits.raise_hint("yaml_nodes"),
                node.start_mark,
                path,
            )
        if depth > self.limits.yaml_depth:  # reachable through aliases only
            raise self.error(
                f"the YAML is nested more than {self.limits.yaml_depth} levels deep (through "
                "aliases); " + self.limits.raise_hint("yaml_depth"),
                node.start_mark,
                path,
            )
        self.document.positions.setdefault(path, position(node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != f"{_TAG}seq":
                raise self.error(_collection_tag(node.tag), node.start_mark, path)
            return [self.visit(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if node.tag != f"{_TAG}map":
            raise self.error(_collection_tag(node.tag), node.start_mark, path)
        return self.mapping(node, path, depth)

    def scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            kind = node.tag.removeprefix(_TAG)
            raise self.error(
                f"YAML reads {shown(node.value)} as a {kind}, which no key accepts; quote it if "
                "it is text",
                node.start_mark,
                path,
            )
        digits = sum(ch.isdigit() for ch in node.value)
        if node.tag in (f"{_TAG}int", f"{_TAG}float") and digits > self.limits.number_digits:
            raise self.error(
                f"a number of {digits} digits is longer than {self.limits.number_digits} "
                "digits; " + self.limits.raise_hint("number_digits"),
                node.start_mark,
                path,
            )
        try:
            value = self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError) as err:  # pragma: no cover
            raise self.error(f"invalid value {shown(node.value)} ({err})", node.start_mark, path)
        if isinstance(value, str):
            # PyYAML decodes "\ud83d\ude42" as two lone surrogates: join such pairs into
            # the one character they spell (lone surrogates stay as they are).
            value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return value

    def mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, key_node, value_node in self.entries(node, path):
            self.document.key_positions.setdefault((*path, key), position(key_node.start_mark))
            out[key] = self.visit(value_node, (*path, key), depth + 1)
        return out

    def entries(
        self, node: yaml.MappingNode, path: Path
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """The mapping's entries after `<<` merges (PyYAML's rules: the mapping's own keys win,
        then the first listed source); resolved once per node, since aliases share nodes."""
        cached = self.resolved.get(id(node))
        if cached is not None:
            return cached
        own: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.key(key_node, path)
            if key in own:
                first = position(own[key].start_mark)[0]
                raise self.error(
                    f"duplicate key '{key}' (first given on line {first})",
                    key_node.start_mark,
                    (*path, key),
                )
            own[key] = key_node
        try:
            self.loader.flatten_mapping(node)
        except yaml.YAMLError as err:
            raise _yaml_error(err, "", self.file, path) from None
        winners: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.key(key_node, path)
            if key not in own or key_node is own[key]:
                winners[key] = (key_node, value_node)  # later merged sources are listed first
        cached = [(key, k, v) for key, (k, v) in winners.items()]
        self.resolved[id(node)] = cached
        return cached

    def key(self, node: yaml.Node, path: Path) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error("a key must be a name, not a collection", node.start_mark, path)
        value = self.scalar(node, path)
        if not isinstance(value, str):
            message = f"key {shown(node.value)} is read by YAML as {shown(value)}, not as a name"
            if isinstance(value, bool):
                message += "; quote it if it is a name"
            raise self.error(message, node.start_mark, path)
        return value


def _short_tag(tag: str) -> str:
    """A tag as it is written in YAML: ``!!bool`` rather than ``tag:yaml.org,2002:bool``."""
    return "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag


def _collection_tag(tag: str) -> str:
    kind = tag.removeprefix(_TAG)
    return f"YAML reads this as a {kind}, which no key accepts; write a plain list or mapping"


def _yaml_error(err: yaml.YAMLError, text: str, file: str, path: Path | None) -> SpecError:
    """A located `SpecError` for text that is not YAML (or not one YAML document)."""
    key = naming.key_path(path) or None if path else None
    if isinstance(err, yaml.reader.ReaderError):
        at = text.count("\n", 0, err.position) + 1
        column = err.position - text.rfind("\n", 0, err.position)
        return SpecError(f"invalid YAML: {err.reason}", file=file, line=at, col=column, key=key)
    if isinstance(err, yaml.MarkedYAMLError):
        problem = err.problem or ""
        if err.context and (not problem or problem.startswith("but")):
            problem = f"{err.context}, {problem}" if problem else err.context
        mark = err.problem_mark or err.context_mark
        line: int | None = None
        col: int | None = None
        if mark is not None:
            line, col = position(mark)
        return SpecError(f"invalid YAML: {problem}", file=file, line=line, col=col, key=key)
    return SpecError(f"invalid YAML: {err}", file=file, key=key)  # pragma: no cover
