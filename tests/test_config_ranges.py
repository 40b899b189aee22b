"""Config values out of their declared range (issue 15, item 4): a ConfigError naming the file,
the (dotted) key, the value and the allowed range; cross-field rules name both keys; every
shipped YAML config still loads; the CLI reports ``error:`` with exit status 2, no traceback."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from hfasr.cli import main
from hfasr.config import (
    FieldError,
    Range,
    bounded,
    check_ranges,
    field_range,
    limits,
    load_config,
    ordered,
)
from hfasr.criteria.sequence import SequenceConfig
from hfasr.data.corpora import (
    CORPORA,
    An4Config,
    FsddConfig,
    LibrispeechConfig,
    TimitConfig,
    YesnoConfig,
)
from hfasr.data.features import FeatureConfig
from hfasr.data.frames import FrameDataConfig
from hfasr.data.synth import SynthConfig
from hfasr.decode.decoder import DecoderConfig
from hfasr.errors import ConfigError
from hfasr.gmm.align import AlignOptions
from hfasr.gmm.feats import FeatureOptions
from hfasr.gmm.train import GmmConfig
from hfasr.lang.prepare import LangConfig
from hfasr.lattice.generate import LatticeConfig
from hfasr.models.blstm import BLSTMConfig
from hfasr.models.dnn import DNNConfig
from hfasr.models.mdlstm import MDLSTMConfig
from hfasr.optim import HFConfig
from hfasr.train.ce import TrainConfig
from hfasr.train.ctc import CtcTrainConfig
from hfasr.train.drivers import FirstOrderConfig, HFTrainConfig
from hfasr.train.schedule import NewBobConfig
from hfasr.train.sequence import SeqTrainConfig

ROOT = Path(__file__).resolve().parents[1]

#: every config dataclass of the package (the loader's schemas and the sections nested in them)
CONFIG_CLASSES = [
    FeatureConfig, SynthConfig, YesnoConfig, FsddConfig, An4Config, LibrispeechConfig, TimitConfig, DNNConfig,
    BLSTMConfig, MDLSTMConfig, HFConfig, HFTrainConfig, FirstOrderConfig, NewBobConfig, TrainConfig, CtcTrainConfig,
    SeqTrainConfig, SequenceConfig, FrameDataConfig, DecoderConfig, AlignOptions, FeatureOptions, GmmConfig,
    LangConfig, LatticeConfig,
]


def _load(cls, tmp_path: Path, text: str, name: str = "conf.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return load_config(cls, f)


# ------------------------------------------------------------------------------------ machinery
def test_range_descriptions():
    assert Range(gt=0).describe() == "must be > 0"
    assert Range(ge=1).describe() == "must be >= 1"
    assert Range(ge=0, lt=1).describe() == "must be in [0, 1)"
    assert Range(gt=0, le=1).describe() == "must be in (0, 1]"
    assert Range(le=0.5).describe() == "must be <= 0.5"
    assert Range(choices=("G", "G_weak")).describe() == "must be one of 'G', 'G_weak'"
    assert Range().describe() == "must be a finite number"


@dataclass
class _Inner:
    damping: float = bounded(1.0, gt=0)
    low: float = bounded(0.1, ge=0)
    high: float = bounded(10.0, ge=0, finite=False)
    sizes: list[int] = field(default_factory=lambda: [1, 2], metadata=limits(ge=1, each=True, nonempty=True))
    p: float | None = bounded(None, ge=0, lt=1)

    def __post_init__(self) -> None:
        check_ranges(self)
        ordered(self, "low", "high")


@dataclass
class _Outer:
    n: int = bounded(3, ge=1)
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize("text,match", [
    ("n: 0\n", r"c\.yaml: key 'n' = 0: must be >= 1$"),
    ("inner: {damping: 0}\n", r"c\.yaml: key 'inner\.damping' = 0: must be > 0$"),
    ("inner: {damping: .inf}\n", r"key 'inner\.damping' = inf: must be > 0 and finite"),
    ("inner: {damping: .nan}\n", r"key 'inner\.damping': expected a number, got nan"),
    ("inner: {sizes: [1, 0]}\n", r"key 'inner\.sizes\[1\]' = 0: must be >= 1"),
    ("inner: {sizes: []}\n", r"key 'inner\.sizes' = \[\]: must not be empty"),
    ("inner: {p: 1}\n", r"key 'inner\.p' = 1: must be in \[0, 1\)"),
    ("inner: {low: 5, high: 1}\n", r"keys 'inner\.low' = 5, 'inner\.high' = 1: need inner\.low <= inner\.high"),
])
def test_loader_names_file_dotted_key_value_and_range(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        _load(_Outer, tmp_path, text, "c.yaml")


def test_allowed_edge_values_load(tmp_path):
    cfg = _load(_Outer, tmp_path, "n: 1\ninner: {high: .inf, p: null, low: 10, sizes: [1]}\n")
    assert cfg.inner.high == float("inf") and cfg.inner.p is None
    assert _load(SeqTrainConfig, tmp_path, "device: cuda:1\n").device == "cuda:1"
    assert _load(FeatureConfig, tmp_path, "frame_length: 0.01\nhigh_freq: -400\n").high_freq == -400


def test_direct_construction_is_checked_too():
    with pytest.raises(FieldError, match=r"_Inner: key 'damping' = -1: must be > 0") as e:
        _Inner(damping=-1)
    assert isinstance(e.value, ValueError) and isinstance(e.value, ConfigError)  # old callers catch ValueError
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)  # crosses worker processes intact
    with pytest.raises(ValueError, match="frame_shift"):
        FeatureConfig(frame_shift=0)


def test_command_line_override_is_marked(tmp_path):
    f = tmp_path / "fbank.yaml"
    f.write_text("num_mel_bins: 40\n")
    with pytest.raises(ConfigError, match=r"fbank\.yaml: key 'num_jobs' = 0 \(from the command line\): must be >= 1"):
        load_config(FeatureConfig, f, {"num_jobs": 0})
    with pytest.raises(ConfigError, match=r"^command line: key 'num_jobs' = 0: must be >= 1"):
        load_config(FeatureConfig, None, {"num_jobs": 0})
    t = tmp_path / "train.yaml"
    t.write_text("optimizer: hf\n")
    with pytest.raises(ConfigError, match=r"train\.yaml: key 'hf\.optimizer\.damping' = -1 \(from the command line\)"):
        load_config(TrainConfig, t, {"hf.optimizer.damping": -1})


# ------------------------------------------------------------------- every config class, one field
# (class, YAML, the message after "<file>: ")
REPRESENTATIVE = [
    (FeatureConfig, "num_mel_bins: -3\n", r"key 'num_mel_bins' = -3: must be >= 1"),
    (FeatureConfig, "frame_shift: 0\n", r"key 'frame_shift' = 0: must be > 0"),
    (SynthConfig, "peak_level: 1.5\n", r"key 'peak_level' = 1\.5: must be in \(0, 1\]"),
    (SynthConfig, "noise_types: [white, purple]\n", r"key 'noise_types\[1\]' = 'purple': must be one of 'white'"),
    (FsddConfig, "conn_min_digits: 0\n", r"key 'conn_min_digits' = 0: must be >= 1"),
    (FsddConfig, "seed: -1\n", r"key 'seed' = -1: must be >= 0"),
    (An4Config, "dev_utterances: 0\n", r"key 'dev_utterances' = 0: must be >= 1"),
    (An4Config, "dev_speakers: []\n", r"key 'dev_speakers' = \[\]: must not be empty"),
    (LibrispeechConfig, "normalize_text: upper\n", r"key 'normalize_text' = 'upper': must be one of 'none', 'lower'"),
    (TimitConfig, "num_phones: 50\n", r"key 'num_phones' = 50: must be one of 60, 48, 39"),
    (DNNConfig, "dropout: 1.0\n", r"key 'dropout' = 1: must be in \[0, 1\)"),
    (BLSTMConfig, "num_layers: 0\n", r"key 'num_layers' = 0: must be >= 1"),
    (MDLSTMConfig, "hidden_sizes: [8, 0]\n", r"key 'hidden_sizes\[1\]' = 0: must be >= 1"),
    (HFConfig, "cg_max_iters: 0\n", r"key 'cg_max_iters' = 0: must be >= 1"),
    (HFTrainConfig, "curvature_fraction: 0\n", r"key 'curvature_fraction' = 0: must be in \(0, 1\]"),
    (FirstOrderConfig, "betas: [0.9, 1.0]\n", r"key 'betas\[1\]' = 1: must be in \[0, 1\)"),
    (NewBobConfig, "halving_factor: 2\n", r"key 'halving_factor' = 2: must be in \(0, 1\]"),
    (TrainConfig, "batch_size: 0\n", r"key 'batch_size' = 0: must be >= 1"),
    (TrainConfig, "hf: {optimizer: {damping: -1}}\n", r"key 'hf\.optimizer\.damping' = -1: must be > 0"),
    (TrainConfig, "newbob: {min_epochs: -1}\n", r"key 'newbob\.min_epochs' = -1: must be >= 0"),
    (TrainConfig, "dnn: {hidden_dim: 0}\n", r"key 'dnn\.hidden_dim' = 0: must be >= 1"),
    (TrainConfig, "data: {length_tolerance: -1}\n", r"key 'data\.length_tolerance' = -1: must be >= 0"),
    (TrainConfig, "lr: 0\n", r"key 'lr' = 0: must be > 0"),
    (TrainConfig, "device: gpu\n", r"key 'device' = 'gpu': must be cpu, cuda or cuda:<index>"),
    (CtcTrainConfig, "criterion: ctc\nadam: {lr: -0.001}\n", r"key 'adam\.lr' = -0\.001: must be > 0"),
    (CtcTrainConfig, "criterion: ctc\nhf: {heldout_fraction: 1}\n", r"key 'hf\.heldout_fraction' = 1: must be in \[0, 1\)"),
    (CtcTrainConfig, "criterion: ctc\nmax_frames: 0\n", r"key 'max_frames' = 0: must be >= 1"),
    (SeqTrainConfig, "regenerate_every: -1\n", r"key 'regenerate_every' = -1: must be >= 0"),
    (SeqTrainConfig, "sequence: {acoustic_scale: 0}\n", r"key 'sequence\.acoustic_scale' = 0: must be > 0"),
    (SeqTrainConfig, "sgd: {momentum: 1}\n", r"key 'sgd\.momentum' = 1: must be in \[0, 1\)"),
    (SequenceConfig, "fisher_scale: 0\n", r"key 'fisher_scale' = 0: must be > 0"),
    (FrameDataConfig, "length_tolerance: -2\n", r"key 'length_tolerance' = -2: must be >= 0"),
    (DecoderConfig, "beam: 0\n", r"key 'beam' = 0: must be > 0"),
    (AlignOptions, "retry_beam: -1\n", r"key 'retry_beam' = -1: must be >= 0"),
    (FeatureOptions, "cmvn: utt\n", r"key 'cmvn' = 'utt': must be one of 'global', 'global\+utt', 'none'"),
    (GmmConfig, "min_variance: 0\n", r"key 'min_variance' = 0: must be > 0"),
    (GmmConfig, "realign_iters: [1, 0]\n", r"key 'realign_iters\[1\]' = 0: must be >= 1"),
    (GmmConfig, "graph_lm: G_strong\n", r"key 'graph_lm' = 'G_strong': must be one of 'G', 'G_weak'"),
    (LangConfig, "sil_prob: 1\n", r"key 'sil_prob' = 1: must be in \(0, 1\)"),
    (LatticeConfig, "num_threads: 0\n", r"key 'num_threads' = 0: must be >= 1"),
]


@pytest.mark.parametrize("cls,text,match", REPRESENTATIVE, ids=[f"{c.__name__}-{t.split(':')[0]}" for c, t, _ in
                                                                 REPRESENTATIVE])
def test_out_of_range_value_names_file_key_and_range(tmp_path, cls, text, match):
    with pytest.raises(ConfigError, match=r"bad\.yaml: " + match):
        _load(cls, tmp_path, text, "bad.yaml")


def test_every_config_class_is_covered():
    assert {c for c, _, _ in REPRESENTATIVE} >= set(CONFIG_CLASSES) - {YesnoConfig}  # yesno: no numbers


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_a_range(cls):
    """Each int / float field (or list of them) has a Range, and its default lies inside."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = {a for a in typing.get_args(tp) if a is not type(None)} or {tp}
        inner = {x for a in args for x in (typing.get_args(a) if typing.get_origin(a) is list else (a,))}
        if inner & {int, float}:
            assert field_range(cls, f.name) is not None, f"{cls.__name__}.{f.name} has no declared range"
    check_ranges(cls())


# --------------------------------------------------------------------------------- cross-field
CROSS = [
    (FsddConfig, "conn_min_digits: 6\nconn_max_digits: 3\n",
     r"keys 'conn_min_digits' = 6, 'conn_max_digits' = 3: need conn_min_digits <= conn_max_digits"),
    (FsddConfig, "conn_min_pause: 0.5\n", r"keys 'conn_min_pause' = 0\.5, 'conn_max_pause' = 0\.3: need"),
    (FeatureConfig, "frame_length: 0.005\n", r"keys 'frame_shift' = 0\.01, 'frame_length' = 0\.005: need frame_shift <= frame_length"),
    (FeatureConfig, "low_freq: 4000\nhigh_freq: 3000\n", r"keys 'low_freq' = 4000, 'high_freq' = 3000: need low_freq < high_freq"),
    (SynthConfig, "min_rate: 300\n", r"keys 'min_rate' = 300, 'max_rate' = 200: need min_rate <= max_rate"),
    (SynthConfig, "test_variants: [m1]\n", r"keys 'train_variants' = .*, 'test_variants' = \['m1'\]: .*disjoint"),
    (HFConfig, "damping_min: 2\n", r"keys 'damping_min' = 2, 'damping' = 1: need damping_min <= damping"),
    (HFConfig, "damping_max: 0.5\n", r"keys 'damping' = 1, 'damping_max' = 0\.5: need damping <= damping_max"),
    (TrainConfig, "hf: {optimizer: {rho_low: 0.9}}\n",
     r"keys 'hf\.optimizer\.rho_low' = 0\.9, 'hf\.optimizer\.rho_high' = 0\.75: need hf\.optimizer\.rho_low <= hf\.optimizer\.rho_high"),
    (TrainConfig, "optimizer: sgd\nnesterov: true\nmomentum: 0\n", r"keys 'nesterov' = True, 'momentum' = 0: nesterov needs momentum > 0"),
    (SeqTrainConfig, "sgd: {reports_per_epoch: 2, lr_schedule: newbob}\n", r"keys 'sgd\.lr_schedule' = 'newbob', 'sgd\.reports_per_epoch' = 2"),
    (DecoderConfig, "max_active: 20\n", r"keys 'min_active' = 20, 'max_active' = 20: need min_active < max_active"),
]


@pytest.mark.parametrize("cls,text,match", CROSS, ids=[f"{c.__name__}-{t.split(':')[0]}" for c, t, _ in CROSS])
def test_cross_field_rules_name_both_keys(tmp_path, cls, text, match):
    with pytest.raises(ConfigError, match=r"bad\.yaml: " + match):
        _load(cls, tmp_path, text, "bad.yaml")


# ------------------------------------------------------------------------- shipped configs load
def _recipe_class(path: Path):
    name, recipe = path.stem, path.parts[-3]
    if name == "fbank":
        return FeatureConfig
    if name == "gmm":
        return GmmConfig
    if name == "lang":
        return LangConfig
    if name == "prepare":
        return CORPORA[recipe]()
    if name == "synth":
        return CORPORA["synth"]()
    from hfasr.bin.train import kind_of

    criterion = (yaml.safe_load(path.read_text()) or {}).get("criterion", "ce")
    return {"ce": TrainConfig, "ctc": CtcTrainConfig, "sequence": SeqTrainConfig}[kind_of(criterion)]


RECIPE_CONFIGS = sorted((ROOT / "recipes").glob("*/conf/*.yaml")) + sorted((ROOT / "bench" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: f"{p.parts[-3]}/{p.parts[-2]}/{p.name}")
def test_every_recipe_config_loads(path):
    load_config(_recipe_class(path), path)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "ablation").glob("*.yaml")), ids=lambda p: p.name)
def test_every_ablation_variant_loads(path, tmp_path):
    """bench/ce_ablation.py: the base TrainConfig + the file's ``set`` + each variant's ``set``."""
    from hfasr.config import from_dict

    spec = yaml.safe_load(path.read_text())
    base = yaml.safe_load((ROOT / spec["base"]).read_text())
    for v in spec["variants"]:
        d = _deep_merge(_deep_merge(base, spec.get("set", {})), v.get("set", {}))
        from_dict(TrainConfig, d, f"{path.name}:{v['name']}")


# --------------------------------------------------------------------------------- through the CLI
def _cli(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("text,match", [
    ("num_mel_bins: -3\n", "key 'num_mel_bins' = -3: must be >= 1"),
    ("frame_shift: 0\n", "key 'frame_shift' = 0: must be > 0"),
])
def test_cli_features_out_of_range(tmp_path, capsys, text, match):
    conf = tmp_path / "fbank.yaml"
    conf.write_text(text)
    err = _cli(capsys, ["features", str(tmp_path / "data"), "--task", "yesno", "--config", str(conf), "--quiet"])
    assert f"{conf}: {match}" in err
    assert not (tmp_path / "data").exists()  # nothing written


@pytest.mark.parametrize("text,match", [
    ("conn_min_digits: 0\n", "key 'conn_min_digits' = 0: must be >= 1"),
    ("conn_min_digits: 6\nconn_max_digits: 3\n",
     "keys 'conn_min_digits' = 6, 'conn_max_digits' = 3: need conn_min_digits <= conn_max_digits"),
])
def test_cli_prepare_fsdd_out_of_range(tmp_path, capsys, text, match):
    conf = tmp_path / "prepare.yaml"
    conf.write_text(text)
    err = _cli(capsys, ["prepare", "fsdd", "--corpus-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
                        "--config", str(conf)])
    assert f"{conf}: {match}" in err


def test_cli_train_nested_and_flag(tmp_path, capsys):
    conf = tmp_path / "train_hf.yaml"
    conf.write_text("criterion: ce\noptimizer: hf\nhf:\n  optimizer: {damping: -1}\n")
    base = ["train", "--data-dir", str(tmp_path / "data"), "--task", "yesno", "--out", str(tmp_path / "exp"),
            "--ali-dir", str(tmp_path / "gmm")]
    err = _cli(capsys, [*base, "--config", str(conf)])
    assert f"{conf}: key 'hf.optimizer.damping' = -1: must be > 0" in err
    conf.write_text("criterion: ce\noptimizer: adam\n")
    err = _cli(capsys, [*base, "--config", str(conf), "--lr", "-0.1"])
    assert f"{conf}: key 'lr' = -0.1 (from the command line): must be > 0" in err
    assert not (tmp_path / "exp").exists()
