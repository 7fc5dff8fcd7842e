"""Reading a user's YAML without PyYAML's silent guesses; every problem names ``file:line``.

PyYAML follows YAML 1.1, where ``yes``, ``no``, ``on``, ``off`` are booleans (``rounds: yes`` would be one
round), while YAML 1.2 and most readers take them, and ``y`` / ``n``, as text. This loader accepts only
``true`` / ``false`` as booleans and refuses the ambiguous words unless quoted. A key written twice in one
mapping is an error too, where PyYAML keeps the last value, and so are an alias (``*name``) inside what it names
and aliases that expand the document beyond :data:`MAX_VALUES` values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mpctf.errors import ConfigError
from mpctf.textfile import read_utf8

_BOOL_TAG = "tag:yaml.org,2002:bool"
_AMBIGUOUS_TAG = "tag:mpctf:ambiguous-boolean"
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
#: YAML 1.1 booleans that YAML 1.2 reads as text (``y`` / ``n`` only some readers); refused unquoted.
_AMBIGUOUS = re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)$")
#: Values a document may hold once its aliases are expanded (a config has a few hundred).
MAX_VALUES = 100_000


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without duplicate keys or YAML 1.1 booleans."""

    def construct_document(self, node: yaml.Node) -> Any:
        if _expanded_size(node, {}) > MAX_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None, f"aliases (*name) expand the document beyond {MAX_VALUES} values", node.start_mark
            )
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        _refuse_duplicates(self, node)
        return super().construct_mapping(node, deep=deep)


class StrictDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes every string :class:`StrictLoader` would refuse unquoted."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` holds with its aliases expanded (each shared node counted once per use)."""
    if id(node) in sizes:
        if sizes[id(node)] < 0:
            raise yaml.constructor.ConstructorError(
                None, None, "an alias (*name) is used inside the node it names", node.start_mark
            )
        return sizes[id(node)]
    sizes[id(node)] = -1  # being counted: meeting it again below means a cycle
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_VALUES:
            break
    sizes[id(node)] = total
    return total


def _refuse_duplicates(loader: StrictLoader, node: yaml.MappingNode) -> None:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue  # a merge (`<<`) may be overridden; unhashable keys are PyYAML's own error
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key `{key}` appears twice in one mapping (first at line {first_line[key]}); keep one",
                key_node.start_mark,
            )
        first_line[key] = line


def _refuse_ambiguous(loader: StrictLoader, node: yaml.ScalarNode) -> None:
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"`{node.value}` is ambiguous (a boolean in YAML 1.1, text in YAML 1.2): write true or false for a "
        f"yes/no setting, or quote it ('{node.value}') for text",
        node.start_mark,
    )


def _without_bool(resolvers: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    return {first: [(t, rx) for t, rx in found if t != _BOOL_TAG] for first, found in resolvers.items()}


StrictLoader.yaml_implicit_resolvers = _without_bool(yaml.SafeLoader.yaml_implicit_resolvers)
StrictLoader.add_implicit_resolver(_BOOL_TAG, _BOOL, list("tTfF"))
StrictLoader.add_implicit_resolver(_AMBIGUOUS_TAG, _AMBIGUOUS, list("yYnNoO"))
StrictLoader.add_constructor(_AMBIGUOUS_TAG, _refuse_ambiguous)
# The dumper resolves the ambiguous words to booleans, so it quotes any string spelled like one.
StrictDumper.add_implicit_resolver(_BOOL_TAG, _AMBIGUOUS, list("yYnNoO"))


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped); ``ConfigError`` naming the file when it is
    missing, unreadable or not UTF-8."""
    if not path.is_file():
        kind = " (a folder)" if path.is_dir() else ""
        raise ConfigError(f"{what} not found: {path}{kind}")
    return read_utf8(path, ConfigError)


def load_yaml(path: Path, what: str = "config file") -> Any:
    """Parse the YAML file ``path`` with :class:`StrictLoader`; ``ConfigError`` naming ``file:line`` otherwise."""
    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "unreadable"
        raise ConfigError(f"{where}: not valid YAML: {_one_line(problem)}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: max(exc.position, 0)].count("\n") + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"{path}:{line}: not valid YAML: {_one_line(exc.reason)} (U+{char:04X})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that :func:`load_yaml` reads back unchanged."""
    return yaml.dump(data, Dumper=StrictDumper, sort_keys=False, allow_unicode=False)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
