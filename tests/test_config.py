from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hfasr.config import from_dict, load_config, save_config
from hfasr.errors import ConfigError


@dataclass
class Inner:
    depth: int = 2
    rate: float = 0.5


@dataclass
class Cfg:
    name: str = "x"
    layers: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=Inner)
    flag: bool = False
    out: Path | None = None


def test_defaults_and_values(tmp_path):
    assert load_config(Cfg) == Cfg()
    f = tmp_path / "c.yaml"
    f.write_text("name: y\nlayers: [3]\ninner: {depth: 5, rate: 1}\nflag: true\nout: exp/a\n")
    c = load_config(Cfg, f)
    assert c == Cfg(name="y", layers=[3], inner=Inner(5, 1.0), flag=True, out=Path("exp/a"))
    assert isinstance(c.inner.rate, float)


def test_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: y\n")
    assert load_config(Cfg, f, {"name": "z", "flag": None}).name == "z"


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: y\nnmae_typo: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'nmae_typo'"):
        load_config(Cfg, f)


def test_unknown_nested_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("inner: {dpeth: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'inner'.*unknown key 'dpeth'"):
        load_config(Cfg, f)


def test_wrong_type_names_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("flag: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*key 'flag'.*true/false"):
        load_config(Cfg, f)
    f.write_text("layers: [1, a]\n")
    with pytest.raises(ConfigError, match=r"key 'layers'\[1\]"):
        load_config(Cfg, f)


def test_malformed_yaml_names_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: malformed YAML"):
        load_config(Cfg, f)
    f.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: expected a mapping"):
        load_config(Cfg, f)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: /no/such.yaml"):
        load_config(Cfg, "/no/such.yaml")


def test_round_trip(tmp_path):
    c = Cfg(name="q", layers=[7], out=Path("a/b"))
    save_config(c, tmp_path / "r.yaml")
    assert load_config(Cfg, tmp_path / "r.yaml") == c
    assert from_dict(Cfg, {"name": "w"}).name == "w"
