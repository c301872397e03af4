"""The YAML -> dataclass machinery under every config: conversion, `key=value` overrides, packaged names.

Why not OmegaConf structured configs (the library the original LatentSync's configs use)? Measured on
Python 3.11 against these dataclasses with omegaconf 2.3.0 (the original's pin) and 2.4.0 (current), via
`OmegaConf.structured` + `merge` + `from_dotlist` + `to_object`:
- `use_motion_module: 1` (or `"yes"`) silently becomes True in both; we reject it ("expected true or false",
  pinned by tests/test_config.py), since an int where a flag belongs is usually a misplaced value.
- `downsample_factors: tuple[int | tuple[int, int], ...]` (SyncNet): 2.3.0 refuses the schema ("Unsupported
  value type: 'Union[int, tuple[int, int]]'"); 2.4.0 accepts it but returns the inner pairs as lists, so the
  packaged syncnet_16_pixel_attn gives `[2, 1]` where we give `(2, 1)` and the loaded configs differ.
- 2.3.0 returns every tuple field as a list and does not check `tuple[int, int]` lengths (`[1, 2, 3]` passes);
  2.4.0 checks the length but its error names no key ("TupleConfig length 3 does not match type hint length 2").
- Every error is multi-line (`...\n    full_key: model.in_chanels\n    reference_type=...`), and the
  `validate()` hooks are not called by `to_object`: both would need a wrapper walking the tree anyway.
- Strings are interpolated: `train_data_dir: /data/${USER}` raises InterpolationKeyError instead of being a path.
- Numbers we accept are refused: `num_frames: 16.0`, `run.seed=7.0`, `"1e3"` for an int.
- `import omegaconf` (2.4.0) costs ~53 ms on top of PyYAML; `import latentsync.config` is ~50 ms in all.
So we keep this converter (~150 lines) and its one-line errors naming the file and the key.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError

# The packaged YAML files (package data `latentsync/configs/`, linked as `configs/` at the repository top).
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"

T = typing.TypeVar("T")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # Try the more specific arms first: a list must not be swallowed by `str`.
        for arm in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _convert(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {list(value)!r}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                pass
            else:
                if f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config field type {tp!r} at {where}")


def field_value(cls: type, name: str, value: Any, where: str) -> Any:
    """`value` as field `name` of dataclass `cls` takes it, by `from_dict`'s rules; text (a CSV cell, a command
    line) is read as YAML first, as `key=value` overrides are."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{where}: {value!r} is not a valid value") from None
    return _convert(value, typing.get_type_hints(cls)[name], where)


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without a default is missing
        raise ConfigError(f"{where}: {e}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-serialisable form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def load_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML file; ConfigError (naming the file) when absent, unreadable or not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (values parsed as YAML) to a config mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. run.seed=7")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
    return data


def resolve_config(kind: str, name_or_path: str | Path) -> Path:
    """A config given as a path, or by name among the packaged ones: `kind` is "unet" or "syncnet", and a
    name is a file stem in that folder ("stage2_512") or a path below the config root ("tiny/unet")."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for candidate in (CONFIG_ROOT / kind / f"{name_or_path}.yaml", CONFIG_ROOT / f"{name_or_path}.yaml"):
        if candidate.exists():
            return candidate
    known = sorted(q.stem for q in (CONFIG_ROOT / kind).glob("*.yaml")) + [f"tiny/{kind}"]
    raise ConfigError(f"{name_or_path}: no such {kind} config (a .yaml path, or one of: {', '.join(known)})")


def load_config(cls: type[T], kind: str, config: Any, overrides: list[str] | None) -> T:
    """`cls` from an instance, a mapping, a YAML path or a packaged name, with `key=value` overrides."""
    if isinstance(config, cls):
        if not overrides:
            return config
        config = to_dict(config)  # overrides apply to a copy
    if isinstance(config, dict):
        data, where = copy.deepcopy(config), f"{kind} config"  # the caller's mapping stays as it was
    else:
        path = resolve_config(kind, config)
        data, where = load_yaml(path), str(path)
    if overrides:
        apply_overrides(data, overrides)
    return from_dict(cls, data, where)
