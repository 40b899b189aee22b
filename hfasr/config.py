"""YAML configuration files loaded into dataclasses.

Each stage of the pipeline has a dataclass whose fields are its options, each with a default and
a docstring-style comment. :func:`load_config` reads a YAML mapping into such a dataclass
(recursing into nested dataclasses); an unknown key or a value of the wrong type is a
:class:`~hfasr.errors.ConfigError` that names the key and the file.

Example::

    @dataclass
    class FeatureConfig:
        num_mel_bins: int = 80   # number of mel filters

    cfg = load_config(FeatureConfig, "conf/fbank.yaml", overrides={"num_mel_bins": 40})
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hfasr.errors import ConfigError

T = TypeVar("T")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to the field type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    return value


def _plain(obj: Any) -> Any:
    """A dataclass instance as nested dicts (Paths as strings), as if read from YAML."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, Path) else obj


def _merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _from_dict(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key '{key}' (known keys: {known})")
        f = fields[key]
        if (isinstance(value, dict) and dataclasses.is_dataclass(hints[key])
                and f.default_factory is not dataclasses.MISSING):
            # a partial section keeps the defaults of the enclosing class's default_factory
            # (e.g. HF settings tuned for sequence training), not those of the section's class
            value = _merge(_plain(f.default_factory()), value)
        kwargs[key] = _check_type(value, hints[key], f"{where}: key '{key}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def from_dict(cls: type[T], data: dict | None, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from a mapping; ``source`` names the origin in error messages."""
    return _from_dict(cls, data or {}, source)


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Load ``path`` (YAML mapping; ``None`` means all defaults) into dataclass ``cls``.

    ``overrides`` (e.g. from the command line; ``"section.key"`` names a key inside a section)
    are applied on top of the file's values and checked the same way. Raises :class:`ConfigError` naming the file and key on any problem.
    """
    data: dict = {}
    where = "<defaults>"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: malformed YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of options at top level, got {type(loaded).__name__}")
        data.update(loaded)
    for key, value in (overrides or {}).items():  # "section.key" overrides one key of a section
        if value is not None:
            *sections, last = key.split(".")
            d = data
            for sec in sections:
                d[sec] = dict(d.get(sec) or {})
                d = d[sec]
            d[last] = value
    return _from_dict(cls, data, where)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config ``cfg`` (a dataclass) as YAML (experiment dirs keep a copy)."""

    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    d = conv(dataclasses.asdict(cfg))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
