"""Typed settings from plain data: YAML mappings and ``--set section.key=value`` strings checked against
dataclass annotations and converted where unambiguous, every error naming the setting (``ingest.workers``).

Generic over dataclasses; :mod:`papertune.config` declares papertune's settings and loads them with these.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

from papertune.errors import ConfigError

# What PyYAML raises, besides YAMLError, on text it parses but cannot construct: a date such as 2001-13-45 or an
# integer past Python's digit limit (ValueError), bad explicitly tagged scalars (!!bool maybe: KeyError,
# !!timestamp x: AttributeError), and nesting deeper than Python's recursion limit.
YAML_FAILURES = (yaml.YAMLError, ValueError, TypeError, AttributeError, KeyError, RecursionError)


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``; a ``ConfigError`` saying ``where`` is not valid YAML when it cannot be read."""
    try:
        return yaml.safe_load(text)
    except YAML_FAILURES as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from exc


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return {bool: "true or false", int: "an integer", float: "a number"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and where unambiguous, convert) ``value`` against the annotation ``tp``."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) > 1:  # e.g. int | Literal["auto"]: name every accepted kind
            kinds = " or ".join(_type_name(arg) for arg in args if arg is not type(None))
            raise ConfigError(f"{where} must be {kinds}; got {value!r}")
        raise ConfigError(errors[0] if errors else f"{where}: unsupported value {value!r}")
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, str):  # --set ingest.extensions=.pdf,.md
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        key_tp, value_tp = get_args(tp) or (Any, Any)
        return {coerce(k, key_tp, where): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer; got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer past float's range: refused below as not finite
                number = math.inf
        elif isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where} must be a number; got {value!r}")
        if not math.isfinite(number):  # .inf, .nan, 1e400 (which overflows to inf)
            raise ConfigError(f"{where} must be a finite number; got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string; got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover - programming error


def from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of settings; got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown setting {path!r}{hint} Known settings here: {', '.join(names)}")
        kwargs[key] = coerce(value, hints[key], path)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, e.g. --set ingest.workers=2; got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: the setting name before '=' is empty")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except YAML_FAILURES:  # not a YAML scalar (e.g. a:b:c, 2001-13-45): the text itself
            value = raw
        _set_path(data, key, value)
    return data
