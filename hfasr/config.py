"""YAML configuration files loaded into dataclasses.

Each stage of the pipeline has a dataclass whose fields are its options, each with a default and
a docstring-style comment. :func:`load_config` reads a YAML mapping into such a dataclass
(recursing into nested dataclasses); an unknown key, a value of the wrong type or a value out of
its field's range is a :class:`~hfasr.errors.ConfigError` that names the file, the key (dotted
for nested sections, e.g. ``hf.optimizer.damping``), the value and what is allowed.

A field declares its range next to its default with :func:`bounded` (a list field: with
``field(default_factory=..., metadata=limits(...))``); the dataclass's ``__post_init__`` calls
:func:`check_ranges` (so configs built in code are checked too) and states cross-field rules with
:func:`require` / :func:`ordered`. They raise :class:`FieldError`, a ConfigError and a ValueError,
which the loader re-raises naming the file and the full dotted key.

Example::

    @dataclass
    class FeatureConfig:
        num_mel_bins: int = bounded(80, ge=1)  # number of mel filters
        low_freq: float = bounded(20.0, ge=0)
        high_freq: float = 8000.0

        def __post_init__(self) -> None:
            check_ranges(self)
            ordered(self, "low_freq", "high_freq", strict=True)

    cfg = load_config(FeatureConfig, "conf/fbank.yaml", overrides={"num_mel_bins": 40})
    # conf/fbank.yaml with num_mel_bins: -3 ->
    # ConfigError: conf/fbank.yaml: key 'num_mel_bins' = -3: must be >= 1
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hfasr.errors import ConfigError

T = TypeVar("T")
_RANGE = "hfasr_range"  # the dataclasses.field metadata key of a field's Range


# --------------------------------------------------------------------------------------- ranges
def _fmt(v: Any) -> str:
    """A value as a user wrote it in YAML: 0 not 0.0, strings quoted."""
    if isinstance(v, float) and math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    if isinstance(v, Path):
        return repr(str(v))
    return repr(v)


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of one config field (bounds are inclusive with ``ge``/``le``).

    ``choices``: the value must be one of these (for str/int fields that are not ``Literal``);
    ``pattern``: a string must match this regular expression (``what`` describes it to the user);
    ``nonempty``: a list must have at least one item; ``each``: the bounds and choices apply to
    every item of a list; ``finite``: a float must not be ±inf (NaN is never allowed).
    ``None`` (of an optional field) is always allowed.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    what: str = ""
    nonempty: bool = False
    each: bool = False
    finite: bool = True

    def describe(self) -> str:
        """``must be > 0``, ``must be in [0, 1)``, ``must be one of 'G', 'G_weak'``, ..."""
        if self.choices is not None:
            return "must be one of " + ", ".join(_fmt(c) for c in self.choices)
        if self.pattern is not None:
            return f"must be {self.what or 'a string matching ' + repr(self.pattern)}"
        low = f"({_fmt(self.gt)}" if self.gt is not None else f"[{_fmt(self.ge)}" if self.ge is not None else None
        high = f"{_fmt(self.lt)})" if self.lt is not None else f"{_fmt(self.le)}]" if self.le is not None else None
        if low and high:
            return f"must be in {low}, {high}"
        if low:
            return f"must be {'>' if self.gt is not None else '>='} {low[1:]}"
        if high:
            return f"must be {'<' if self.lt is not None else '<='} {high[:-1]}"
        return "must be a finite number" if self.finite else "must be a number"

    def _bad(self, v: Any) -> str | None:
        """Why the single value ``v`` is out of range, or None."""
        if v is None:
            return None
        if self.choices is not None:
            return None if v in self.choices else self.describe()
        if self.pattern is not None:
            return None if isinstance(v, str) and re.fullmatch(self.pattern, v) else self.describe()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None  # a type error is the loader's business
        if math.isnan(v):
            return "must not be NaN"
        if self.finite and math.isinf(v):
            d = self.describe()
            return d if d == "must be a finite number" else f"{d} and finite"
        ok = ((self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
              and (self.lt is None or v < self.lt) and (self.le is None or v <= self.le))
        return None if ok else self.describe()

    def violation(self, name: str, value: Any) -> tuple[str, Any, str] | None:
        """``(key, bad value, reason)`` when ``value`` of field ``name`` breaks the range, else None
        (for a list with ``each``, the key names the item: ``hidden_sizes[1]``)."""
        if value is None:
            return None
        if self.nonempty and isinstance(value, (list, tuple, str)) and len(value) == 0:
            return name, value, "must not be empty"
        if self.each and isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                why = self._bad(v)
                if why:
                    return f"{name}[{i}]", v, why
            return None
        why = self._bad(value)
        return (name, value, why) if why else None


def limits(gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None,
           choices: Collection | None = None, pattern: str | None = None, what: str = "", nonempty: bool = False,
           each: bool = False, finite: bool = True) -> dict[str, Range]:
    """``dataclasses.field`` metadata declaring a field's :class:`Range`, for fields with a
    ``default_factory``: ``sizes: list[int] = field(default_factory=..., metadata=limits(ge=1, each=True))``."""
    return {_RANGE: Range(gt=gt, ge=ge, lt=lt, le=le, choices=tuple(choices) if choices is not None else None,
                          pattern=pattern, what=what, nonempty=nonempty, each=each, finite=finite)}


def bounded(default: Any, **kw: Any) -> Any:
    """A dataclass field with ``default`` and a :class:`Range` (keywords of :func:`limits`), checked
    by :func:`check_ranges` and the loader: ``num_mel_bins: int = bounded(40, ge=1)``."""
    return dataclasses.field(default=default, metadata=limits(**kw))


#: keywords of :func:`bounded` for a torch device option: ``device: str = bounded("cpu", **TORCH_DEVICE)``
TORCH_DEVICE: dict[str, str] = {"pattern": r"cpu|cuda(:\d+)?", "what": "cpu, cuda or cuda:<index>"}


def field_range(cls_or_obj: Any, name: str) -> Range | None:
    """The declared :class:`Range` of field ``name`` (None if it has none)."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name:
            return f.metadata.get(_RANGE)
    raise KeyError(name)


class FieldError(ConfigError, ValueError):
    """Out-of-range config value(s): ``values`` maps each key involved (relative to the dataclass,
    dotted for a sub-section) to its value; ``reason`` is a format string whose ``{0}``, ``{1}``, ...
    are those keys, so that the loader can name them with their full dotted path and the file."""

    def __init__(self, values: dict[str, Any], reason: str, owner: str = "") -> None:
        self.values, self.reason, self.owner = dict(values), reason, owner
        super().__init__(self.message())

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return type(self), (self.values, self.reason, self.owner)

    def message(self, prefix: str = "", source: str | None = None, overridden: Collection[str] = ()) -> str:
        """``<source>: key 'a.b' = 0: must be > 0`` (``source`` defaults to the dataclass's name);
        keys in ``overridden`` (full dotted names) are marked as set on the command line."""
        keys = [prefix + k for k in self.values]
        parts = [f"'{k}' = {_fmt(v)}" + (" (from the command line)" if k in overridden else "")
                 for k, v in zip(keys, self.values.values())]
        head = ("key " if len(parts) == 1 else "keys ") + ", ".join(parts)
        where = self.owner if source is None else source
        return f"{where + ': ' if where else ''}{head}: {self.reason.format(*keys)}"


def check_ranges(obj: Any) -> None:
    """Raise :class:`FieldError` for the first field of dataclass instance ``obj`` whose value is
    outside its declared :class:`Range` (call it first in ``__post_init__``)."""
    for f in dataclasses.fields(obj):
        rng = f.metadata.get(_RANGE)
        if rng is not None:
            bad = rng.violation(f.name, getattr(obj, f.name))
            if bad:
                raise FieldError({bad[0]: bad[1]}, bad[2], type(obj).__name__)


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def require(obj: Any, ok: bool, reason: str, *keys: str) -> None:
    """A cross-field rule of ``obj``: unless ``ok``, raise :class:`FieldError` naming ``keys`` (field
    names, dotted into sub-sections) and their values; ``reason`` may refer to them as ``{0}``, ``{1}``."""
    if not ok:
        raise FieldError({k: _get(obj, k) for k in keys}, reason, type(obj).__name__)


def ordered(obj: Any, low: str, high: str, strict: bool = False) -> None:
    """Require ``low <= high`` (``<`` if ``strict``) for two fields of ``obj`` (skipped if either is None)."""
    a, b = _get(obj, low), _get(obj, high)
    if a is None or b is None:
        return
    require(obj, a < b if strict else a <= b, "need {0} " + ("<" if strict else "<=") + " {1}", low, high)


def _check_type(value: Any, tp: Any, where: str, ctx: _Ctx | None = None, key: str = "") -> Any:
    """Return ``value`` converted to the field type ``tp`` or raise ConfigError (``where`` starts
    its messages; ``ctx`` and ``key``, the dotted key, name a nested section's keys)."""
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
                return _check_type(value, a, where, ctx, key)
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
        return _from_dict(tp, value, ctx or _Ctx(where), key + ".")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
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


@dataclasses.dataclass(frozen=True)
class _Ctx:
    """Where the values come from: the file (or ``<dict>``) and the dotted keys set on the command line."""

    source: str
    overridden: frozenset[str] = frozenset()

    def key(self, key: str) -> str:
        """``<source>: key 'a.b'`` (marked when the value came from the command line)."""
        note = " (from the command line)" if key in self.overridden else ""
        return f"{self.source}: key '{key}'{note}"


def _from_dict(cls: type[T], data: dict, ctx: _Ctx, prefix: str = "") -> T:
    """Build ``cls`` from ``data``, the section ``prefix`` (``"hf.optimizer."``; ``""`` at top level)."""
    section = f"{ctx.source}: section '{prefix[:-1]}'" if prefix else ctx.source
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{section}: unknown key '{key}' (known keys: {known})")
        f = fields[key]
        if (isinstance(value, dict) and dataclasses.is_dataclass(hints[key])
                and f.default_factory is not dataclasses.MISSING):
            # a partial section keeps the defaults of the enclosing class's default_factory
            # (e.g. HF settings tuned for sequence training), not those of the section's class
            value = _merge(_plain(f.default_factory()), value)
        kwargs[key] = _check_type(value, hints[key], ctx.key(prefix + key), ctx, prefix + key)
    try:
        obj = cls(**kwargs)
        check_ranges(obj)  # also for dataclasses whose __post_init__ does not
    except FieldError as e:
        raise ConfigError(e.message(prefix, ctx.source, ctx.overridden)) from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{section}: {e}") from e
    return obj


def from_dict(cls: type[T], data: dict | None, source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from a mapping; ``source`` names the origin in error messages."""
    return _from_dict(cls, data or {}, _Ctx(source))


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Load ``path`` (YAML mapping; ``None`` means all defaults) into dataclass ``cls``.

    ``overrides`` (e.g. from the command line; ``"section.key"`` names a key inside a section)
    are applied on top of the file's values and checked the same way. Raises :class:`ConfigError` naming the file and key on any problem.
    """
    data: dict = {}
    where = "command line"  # without a file, only an override can be wrong
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
    overridden = set()
    for key, value in (overrides or {}).items():  # "section.key" overrides one key of a section
        if value is not None:
            *sections, last = key.split(".")
            d = data
            for sec in sections:
                d[sec] = dict(d.get(sec) or {})
                d = d[sec]
            d[last] = value
            overridden.add(key)
    return _from_dict(cls, data, _Ctx(where, frozenset(overridden) if path is not None else frozenset()))


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

    from hfasr.fileio import write_text

    d = conv(dataclasses.asdict(cfg))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(d, sort_keys=False))  # atomic: a crash leaves the old copy or the new
