"""YAML text → validated, frozen `Config`; every error is one line naming file, line and key path.

Theory of operation: the YAML is *composed* (not constructed), so every key and value keeps the
line it came from. `_Walker` then walks the node tree alongside the model's type hints: a mapping
becomes the dataclass of its field, a list a tuple, a scalar is type-checked (bool is not an int;
an int is a fine float) after ``${VAR}`` substitution. Each converted value goes through its rule
in `natkit.config.checks`; the first problem found stops the load with a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from natkit.addr import ListenURI
from natkit.config.checks import (
    FIELD_RULES,
    ITEM_RULES,
    SECTION_RULES,
    Context,
    FieldRule,
    Problem,
    SectionRule,
)
from natkit.config.cross import check_config, check_stun
from natkit.config.envsubst import substitute
from natkit.config.model import Config, StunConfig, config_fields, is_section
from natkit.errors import ConfigError
from natkit.yamlsource import closest
from natkit.yamlsource import compose as _compose

__all__ = ["load", "loads"]

T = TypeVar("T")

# Section rules: per-section ones from `checks`, the cross-section ones from `cross` (the
# top-level rule runs last, on the whole Config, so it can compare sections).
_SECTION_RULES: dict[type, SectionRule] = {
    **SECTION_RULES,
    StunConfig: check_stun,
    Config: check_config,
}

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load(path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the config file at `path`; None gives the built-in defaults.

    `env` replaces os.environ for ``${VAR}`` substitution. Raises ConfigError.
    """
    if path is None:
        return Config()
    source = os.fspath(path)
    text = _read(source)
    return loads(text, source, env=env, base_dir=Path(os.path.abspath(source)).parent)


def loads(
    text: str,
    source: str = "<string>",
    *,
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Load and validate config text; `source` names it in errors, relative paths start at
    `base_dir` (default: the working directory). Raises ConfigError."""
    root = _compose(text, source)
    if root is None:
        raise ConfigError("file is empty (a config needs at least 'version: 1')", file=source)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            f"the top level must be a mapping (version: 1, stun: ...), got {_shape(root)}",
            file=source,
            line=root.start_mark.line + 1,
        )
    walker = _Walker(source, os.environ if env is None else env, Path(base_dir or os.getcwd()))
    config = walker.section(Config, root, "")
    return dataclasses.replace(config, source=None if source == "<string>" else source)


def _read(source: str) -> str:
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", file=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", file=source) from None
    except PermissionError:
        raise ConfigError("file not readable (permission denied)", file=source) from None
    except OSError as err:
        raise ConfigError(f"cannot read the file: {err.strerror}", file=source) from None
    try:
        return data.decode("utf-8-sig")  # -sig: editors on Windows prepend a BOM
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text", file=source, line=line) from None


def _shape(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return "a single value"
    return "a mapping" if isinstance(node, yaml.MappingNode) else "a list"


def _got(value: object, secret: bool) -> str:
    """How an error message shows a value the user wrote; a secret only by its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if secret:
        kinds = {int: "an integer", float: "a number", str: "a string"}
        return kinds.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    return f"a {type(value).__name__}"  # dates, binary: YAML types natkit never takes


def _describe(tp: Any) -> str:
    """The type a key wants, as a user reads it: 'an integer or "auto"'."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        options = [json.dumps(a) for a in args]
        return " or ".join(options) if len(options) <= 2 else "one of " + ", ".join(options)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        return "a list"
    if origin is dict or is_section(tp):
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    names |= {type(None): "null", ListenURI: "a listen URI such as udp://0.0.0.0:3478"}
    return names.get(tp, str(tp))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Walker:
    def __init__(self, source: str, env: Mapping[str, str], base_dir: Path) -> None:
        self.source = source
        self.env = env
        self.ctx = Context(base_dir=base_dir)
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()

    def error(self, node: yaml.Node, path: str, problem: str) -> ConfigError:
        line = node.start_mark.line + 1
        return ConfigError(problem, file=self.source, line=line, path=path or None)

    def section(self, cls: type[T], node: yaml.Node, path: str) -> T:
        """A mapping node → an instance of the dataclass `cls`, every key checked."""
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, path, f"expected a mapping, got {self.got(node, path, False)}")
        known = {f.name: f for f in config_fields(cls)}
        hints = get_type_hints(cls)  # resolves the model's string annotations
        values: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        for key_node, value_node in self.entries(node, path):
            key = self.key(key_node, path, known)
            field, key_path = known[key], _join(path, key)
            secret = bool(field.metadata.get("secret"))
            item_rule = ITEM_RULES.get((cls, key))
            value = self.convert(value_node, hints[key], key_path, secret, item_rule)
            rule = FIELD_RULES.get((cls, key))
            values[key] = value if rule is None else self.apply(rule, value, value_node, key_path)
            nodes[key] = value_node
        missing = [
            name
            for name, f in known.items()
            if name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise self.error(node, path, f"missing required key {json.dumps(missing[0])}")
        obj = cls(**values)
        section_rule = _SECTION_RULES.get(cls)
        if section_rule is not None:
            try:
                section_rule(obj)
            except Problem as problem:
                raise self.blame(problem, node, nodes, path) from None
        return obj

    def entries(self, node: yaml.MappingNode, path: str) -> list[tuple[yaml.Node, yaml.Node]]:
        """The (key, value) node pairs of a mapping: a key written twice is an error (PyYAML
        would keep the last silently); keys merged in with ``<<: *anchor`` may be overridden."""
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                line = key_node.start_mark.line + 1
                if key_node.value in first:
                    where = _join(path, str(key_node.value))
                    problem = f"duplicate key (first given on line {first[key_node.value]})"
                    raise self.error(key_node, where, problem)
                first[key_node.value] = line
        self.constructor.flatten_mapping(node)  # merged keys first, then the node's own
        last = {
            (k.tag, k.value) if isinstance(k, yaml.ScalarNode) else id(k): (k, v)
            for k, v in node.value
        }
        return list(last.values())

    def key(self, node: yaml.Node, path: str, known: Mapping[str, Any]) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            raise self.error(node, path, f"keys must be names, got {self.got(node, path, False)}")
        key = str(node.value)
        key_path = _join(path, key)
        if key not in known:
            close = closest(key, known)
            hint = f'did you mean "{close}"?' if close else "known keys: " + ", ".join(known)
            raise self.error(node, key_path, f"unknown key; {hint}")
        return key

    def blame(
        self, problem: Problem, node: yaml.Node, nodes: Mapping[str, yaml.Node], path: str
    ) -> ConfigError:
        """Point a section rule's finding at the key (or list item) it names; for a dotted key,
        at the deepest part of it the YAML spells out (a default has no line of its own)."""
        first, *rest = problem.key.split(".")
        target = nodes.get(first, node)
        for part in rest:
            if not isinstance(target, yaml.MappingNode):
                break
            found = [
                v for k, v in target.value if isinstance(k, yaml.ScalarNode) and k.value == part
            ]
            if not found:
                break
            target = found[-1]
        key_path = _join(path, problem.key)
        if problem.index is not None:
            key_path += f"[{problem.index}]"
            if isinstance(target, yaml.SequenceNode) and problem.index < len(target.value):
                target = target.value[problem.index]
        return self.error(target, key_path, problem.message)

    def apply(self, rule: FieldRule, value: Any, node: yaml.Node, path: str) -> Any:
        try:
            return rule(value, self.ctx)
        except ValueError as err:
            raise self.error(node, path, str(err)) from None

    def convert(
        self,
        node: yaml.Node,
        tp: Any,
        path: str,
        secret: bool = False,
        item_rule: FieldRule | None = None,
    ) -> Any:
        """One YAML node → a value of type `tp` (a model field type)."""
        origin, args = get_origin(tp), get_args(tp)
        if is_section(tp):
            return self.section(tp, node, path)
        if origin in (Union, types.UnionType):
            return self.union(node, tp, path, secret)
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                raise self.mismatch(node, tp, path, secret, " (write [] for none)")
            items = []
            for index, item in enumerate(node.value):
                item_path = f"{path}[{index}]"
                value = self.convert(item, args[0], item_path, secret)
                items.append(
                    value if item_rule is None else self.apply(item_rule, value, item, item_path)
                )
            return tuple(items)
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.mismatch(node, tp, path, secret, " (write {} for none)")
            out: dict[str, Any] = {}
            for key_node, value_node in self.entries(node, path):
                key = self.convert(key_node, args[0], path)
                out[key] = self.convert(value_node, args[1], _join(path, str(key)), secret)
            return out
        value = self.scalar(node, path, tp, secret)
        return self.check_scalar(value, node, tp, path, secret)

    def union(self, node: yaml.Node, tp: Any, path: str, secret: bool) -> Any:
        members = [m for m in get_args(tp) if m is not type(None)]
        if (
            isinstance(node, yaml.ScalarNode)
            and node.tag == _NULL_TAG
            and len(members) < len(get_args(tp))
        ):
            return None
        if len(members) == 1:  # X | None: X's own, more precise, errors
            return self.convert(node, members[0], path, secret)
        for member in members:
            try:
                return self.convert(node, member, path, secret)
            except ConfigError:
                continue
        raise self.mismatch(node, tp, path, secret)

    def check_scalar(self, value: Any, node: yaml.Node, tp: Any, path: str, secret: bool) -> Any:
        if get_origin(tp) is Literal:
            # type() too: True == 1, and `version: true` is not version 1.
            if any(type(value) is type(a) and value == a for a in get_args(tp)):
                return value
            # YAML 1.1 reads a plain `off` as false: where "off" is a choice, it means "off".
            if value is False and "off" in get_args(tp) and str(node.value).lower() == "off":
                return "off"
            options = [a for a in get_args(tp) if isinstance(a, str)]
            close = closest(value, options)
            hint = f' (did you mean "{close}"?)' if close else ""
            if len(get_args(tp)) == 1:  # `version: 2`
                got = self.got(node, path, secret)
                raise self.error(node, path, f"must be {_describe(tp)}, got {got}")
            raise self.mismatch(node, tp, path, secret, hint)
        if tp is ListenURI:
            if not isinstance(value, str):
                raise self.mismatch(node, tp, path, secret)
            try:
                return ListenURI.parse(value)
            except ValueError as err:
                raise self.error(node, path, str(err)) from None
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is tp:
            return value
        quote = " (put it in quotes)" if tp is str and isinstance(value, int | float) else ""
        raise self.mismatch(node, tp, path, secret, quote)

    def mismatch(
        self, node: yaml.Node, tp: Any, path: str, secret: bool, hint: str = ""
    ) -> ConfigError:
        got = self.got(node, path, secret)
        return self.error(node, path, f"expected {_describe(tp)}, got {got}{hint}")

    def got(self, node: yaml.Node, path: str, secret: bool) -> str:
        if not isinstance(node, yaml.ScalarNode):
            return _shape(node)
        return _got(self.scalar(node, path, None, secret), secret)

    def resolve(self, text: str) -> str:
        tag: str = self.resolver.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        return tag

    def scalar(self, node: yaml.Node, path: str, tp: Any, secret: bool) -> Any:
        """The Python value of a scalar node, after ``${VAR}`` substitution in strings."""
        if not isinstance(node, yaml.ScalarNode):
            raise self.mismatch(node, tp, path, secret)
        if node.tag == _STR_TAG and "$" in node.value:
            try:
                text = substitute(node.value, self.env)
            except ValueError as err:
                raise self.error(node, path, str(err)) from None
            # An unquoted `${PORT}` may stand for a number or a boolean: re-resolve its type.
            tag = _STR_TAG if node.style is not None else self.resolve(text)
            node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, style=node.style)
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "cannot read this value"
            raise self.error(node, path, problem) from None
