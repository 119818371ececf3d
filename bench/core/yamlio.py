"""Reading a spec's YAML: strict where PyYAML is lenient, one-line errors where it raises.

`load_text(text, source)` parses one YAML document with `SpecLoader`, PyYAML's SafeLoader with
two changes:

* numbers are read as YAML 1.2 reads them: `1e-3`, `1.5e-4`, `1.0e3` and `-.5` are floats
  (YAML 1.1 — PyYAML's default — reads the first and third as strings), so a number is never
  a string and a quoted number (`'0.5'`) can be told from one and rejected by the schema;
* a key given twice in one mapping is an error naming the key's path and both lines (PyYAML
  keeps the last silently), and an alias that contains itself is an error (PyYAML builds a
  recursive list that nothing downstream can hash).

Every problem is a ConfigError whose message is one line: the file, the key (or `<yaml>` for
a syntax error) and the line.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bench.core.errors import ConfigError

_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                        |[-+]?\.(?:inf|Inf|INF)
                        |\.(?:nan|NaN|NAN))$""", re.X)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class SpecLoader(yaml.SafeLoader):
    """SafeLoader reading YAML 1.2 floats (`1e-3` is a float, not a string)."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SpecLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def _path(parts: tuple) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def _check_nodes(node: yaml.Node, at: tuple, on_path: set, seen: set, source: str | None) -> None:
    """Duplicate keys and self-containing aliases, found on the composed node tree."""
    if id(node) in on_path:
        raise ConfigError(_path(at), f"an alias that contains itself (line {node.start_mark.line + 1}); "
                                     "allowed: a value that does not refer to itself", source)
    if id(node) in seen:  # an alias of a node checked already
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        on_path.add(id(node))
        first_at: dict = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                # keys compared as written (plain scalars): `1` and `'1'` count as the same key
                mark = key_node.start_mark
                if key in first_at:
                    line, column = first_at[key]
                    where = (f"line {line} and line {mark.line + 1}" if line != mark.line + 1 else
                             f"line {line}, columns {column} and {mark.column + 1}")
                    raise ConfigError(_path(at + (key,)),
                                      f"duplicate key ({where}); allowed: each key once per mapping", source)
                first_at[key] = (mark.line + 1, mark.column + 1)
            _check_nodes(value_node, at + (key if key is not None else "?",), on_path, seen, source)
        on_path.discard(id(node))
    elif isinstance(node, yaml.SequenceNode):
        on_path.add(id(node))
        for i, item in enumerate(node.value):
            _check_nodes(item, at + (i,), on_path, seen, source)
        on_path.discard(id(node))


def load_text(text: str, source: str | None = None) -> Any:
    """The YAML document in `text`, read by SpecLoader. Raises a one-line ConfigError."""
    loader = None
    try:
        loader = SpecLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, (), set(), set(), source)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = " ".join(str(err.problem or err.context or "").split())
        raise ConfigError("<yaml>", f"not valid YAML at {where}: {problem}", source) from None
    except yaml.reader.ReaderError as err:
        raise ConfigError("<yaml>", f"not YAML text: character U+{err.character:04X} at offset {err.position} is "
                                    "not allowed; allowed: printable UTF-8 text", source) from None
    except yaml.YAMLError as err:
        raise ConfigError("<yaml>", f"not valid YAML: {' '.join(str(err).split())}", source) from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise ConfigError("<yaml>", f"a value cannot be read: {' '.join(str(err).split())}", source) from None
    except RecursionError:
        raise ConfigError("<yaml>", "nested too deeply to read; allowed: a spec nested a few levels deep",
                          source) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_file(path: str | Path) -> Any:
    """The YAML document in the file `path` (UTF-8 text). Raises a one-line ConfigError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError("<file>", f"cannot read the spec ({err.strerror or err})", str(path)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError("<file>", f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}: "
                                    f"a binary file?); allowed: a YAML spec", str(path)) from None
    return load_text(text, str(path))
