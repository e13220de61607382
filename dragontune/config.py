"""Typed configs: dataclasses loaded from YAML, overridable by dotted ``key=value`` CLI arguments.

Unknown keys are errors that name the key and suggest the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dragontune.errors import ConfigError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {where}{key!r}{hint} (valid keys here: {', '.join(sorted(valid))})")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config value {name}={value!r} does not match {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=name + ".")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config value {name}={value!r} must be a list")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        out = [_coerce(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config value {name}={value!r} must be a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config value {name}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"config value {name}={value!r} must be an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"config value {name}={value!r} must be an integer") from None
        if f != int(f):
            raise ConfigError(f"config value {name}={value!r} must be an integer")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config value {name}={value!r} must be a number") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config value {name}={value!r} must be a string")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in (data or {}).items():
        if k not in types_:
            raise _unknown_key(k, list(types_), prefix)
        kwargs[k] = _coerce(v, types_[k], prefix + k)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"config section {prefix or cls.__name__!r}: {e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str], cls: type) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML scalars)."""
    data = dict(data)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = ov.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        parts = key.strip().split(".")
        node, tp, where = data, cls, ""
        for i, p in enumerate(parts):
            valid = _field_types(tp) if dataclasses.is_dataclass(tp) else None
            if valid is not None and p not in valid:
                raise _unknown_key(p, list(valid), where)
            if i == len(parts) - 1:
                node[p] = value
            else:
                sub = node.get(p)
                sub = dict(sub) if isinstance(sub, dict) else {}
                node[p] = sub
                node = sub
                tp = valid[p] if valid is not None else None
                where += p + "."
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file such as configs/baseline.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must contain a mapping at top level")
    data = apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False)
