"""Reading a spec file: UTF-8 text, one YAML document, no duplicate keys, bounded size.

PyYAML's safe loader keeps the last of two equal keys silently, reads aliases
by reference (a small file can stand for a structure of billions of nodes once
anything walks it) and raises UnicodeDecodeError tracebacks on binary files.
``load_yaml`` refuses each of these with one line that says where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: A spec is a page or two of YAML; anything bigger is not a spec.
MAX_BYTES = 1 << 20
#: Nodes in the document once every alias is expanded (a large spec has a few hundred).
MAX_NODES = 100_000
MAX_DEPTH = 64


class YamlError(ValueError):
    """A spec file that is not a safe, single, well-formed YAML document."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a key is how merges are meant to work
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the schema refuses it later, with its path
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise YamlError(f"has the key {key!r} twice, at lines {first} and {line}: the later value "
                                "would silently win; keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse recursive aliases and documents that alias expansion makes huge or deep."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in on_path:
            raise YamlError(f"has a recursive alias at line {node.start_mark.line + 1} (a node that "
                           "contains itself); a spec must be a tree")
        if depth > MAX_DEPTH:
            raise YamlError(f"is nested more than {MAX_DEPTH} levels deep (line {node.start_mark.line + 1})")
        on_path.add(ident)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise YamlError(f"expands to more than {MAX_NODES:,} nodes once its aliases are resolved; "
                                "a spec is a page of YAML, not a generated structure")
        on_path.discard(ident)
        sizes[ident] = total
        return total

    size(root, 0)


def load_yaml(path: Path) -> Any:
    """Parse one spec file; YamlError says what is wrong (and where) in one line."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlError(f"is {size:,} bytes; a spec is at most {MAX_BYTES:,} bytes of YAML")
    data = path.read_bytes()
    if b"\0" in data:
        raise YamlError("is a binary file (it contains NUL bytes), not YAML text")
    try:
        text = data.decode("utf-8-sig")  # a BOM some editors write is harmless
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise YamlError(f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); save it as UTF-8") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlError(f"is not valid YAML{at}: {problem}") from None
    finally:
        loader.dispose()
