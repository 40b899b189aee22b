"""Hostile-user probes of the ``hfasr`` command line (issue 15): every fault a user can cause.

Builds a small workspace once (Kaldi's yesno corpus through prepare, features, lang, GMM, a CE
DNN, loglikes, lattices, one sMBR-HF update and a tiny CTC-HF run: the recipe's stages with tiny
models), then runs each probe on a fresh copy of it: a tampered, truncated or out-of-range
input, a full disk (``ulimit -f``), a concurrent writer. Each probe's outcome is one of

* ``clean error``   exit status != 0 with an ``error:`` line naming the item, no traceback, and
  the stage's previous outputs intact (no partial files, no temp files);
* ``handled``       exit 0 with a correct result (e.g. a downmix with a warning, a skipped and
  listed item with ``--skip-bad``);
* ``WRONG``         exit 0 with wrong or partial results, or an error that left partial outputs;
* ``TRACEBACK``     a Python traceback;
* ``PAYLOAD RAN``   a tampered pickle's code was executed.

The bar: no WRONG, TRACEBACK or PAYLOAD RAN. Usage::

    python bench/probes.py --work /tmp/probes [--only NAME_SUBSTRING] [--out bench/results/probes.md]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
HFASR = str(Path(sys.executable).parent / "hfasr")
YESNO = Path(os.environ.get("HFASR_YESNO", ROOT.parent / "shared" / "data" / "yesno" / "waves_yesno"))
FSDD = Path(os.environ.get("HFASR_FSDD", ROOT.parent / "shared" / "data" / "fsdd" / "recordings"))
MARKER = "PAYLOAD_RAN"

TINY = {
    "fbank.yaml": "num_mel_bins: 23\nframe_length: 0.025\nframe_shift: 0.01\ndither: 0.0\n",
    "lang.yaml": "",
    "gmm.yaml": "total_gauss: 100\n",
    "train_ce.yaml": ("criterion: ce\noptimizer: adam\nepochs: 2\nlr: 0.001\nbatch_size: 256\nnum_threads: 1\n"
                      "dnn: {hidden_dim: 64, num_layers: 2, context: 3, activation: relu, utt_cmn: true}\n"),
    "train_ce_hf.yaml": ("criterion: ce\noptimizer: hf\nnum_threads: 1\n"
                         "dnn: {hidden_dim: 32, num_layers: 2, context: 3, activation: relu}\n"
                         "hf: {updates: 2, heldout_fraction: 0.1, curvature_fraction: 0.2, optimizer: {cg_max_iters: 10}}\n"),
    "seq_smbr_hf.yaml": ("criterion: smbr\noptimizer: hf\nnum_threads: 1\nsequence: {acoustic_scale: 0.1}\n"
                         "hf: {updates: 2, heldout_fraction: 0.2, curvature_fraction: 0.3, "
                         "optimizer: {damping: 0.1, cg_max_iters: 10}}\n"),
    "ctc_dnn_hf.yaml": ("criterion: ctc\nmodel: dnn\noptimizer: hf\nunits: phone\nnum_threads: 1\n"
                        "hf: {updates: 2, heldout_fraction: 0.1, curvature_fraction: 0.3, optimizer: {cg_max_iters: 10}}\n"),
}


# --------------------------------------------------------------------------------- helpers
def run(cmd: list[str], cwd: Path, env_extra: dict | None = None, shell_prefix: str = "",
        timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    if shell_prefix:
        line = shell_prefix + " " + " ".join(f"'{c}'" for c in cmd)
        return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def must(cmd: list[str], cwd: Path) -> None:
    r = run(cmd, cwd)
    if r.returncode != 0:
        raise SystemExit(f"workspace step failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def write_evil(path: Path) -> None:
    """A pickle that runs ``touch PAYLOAD_RAN`` in the working directory when unpickled."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"model_config": {}, "state_dict": _Payload(), "log_prior": _Payload(),
                     "cut_ids": _Payload()}, f)


def truncate(path: Path, frac: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under ``d`` (the lock file excluded)."""
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".hfasr.lock"}


def temp_files(d: Path) -> list[str]:
    return [str(p.relative_to(d)) for p in d.rglob("*")
            if ".tmp" in p.name or ".staging" in p.name]


def tamper_features(ws: Path, split: str, value: float, frames: slice = slice(3, 6), index: int = 0) -> str:
    """Put ``value`` into some frames of one cut of ``yesno_feats_<split>`` (numpy storage); its id."""
    from lhotse import CutSet, NumpyFilesWriter
    from lhotse.utils import fastcopy

    path = ws / "data" / f"yesno_feats_{split}.jsonl.gz"
    cuts = list(CutSet.from_file(path))
    c = cuts[index]
    f = c.load_features().copy()
    f[frames] = value
    with NumpyFilesWriter(ws / "data" / "tampered") as w:
        key = w.write(c.id + "_t", f)
        feats = fastcopy(c.features, storage_type=w.name, storage_path=str(ws / "data" / "tampered"), storage_key=key)
    cuts[index] = fastcopy(c, features=feats)
    CutSet.from_cuts(cuts).to_file(path)
    return c.id


# --------------------------------------------------------------------------------- workspace
def build_workspace(work: Path) -> Path:
    base = work / "base"
    if (base / "DONE").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    conf = base / "conf"
    conf.mkdir(parents=True)
    for name, text in TINY.items():
        (conf / name).write_text(text)
    d, e = base / "data", base / "exp"
    steps = [
        [HFASR, "prepare", "yesno", "--corpus-dir", str(YESNO), "--out", str(d)],
        [HFASR, "features", str(d), "--task", "yesno", "--config", str(conf / "fbank.yaml"), "--quiet"],
        [HFASR, "lang", "--data-dir", str(d), "--task", "yesno", "--out", str(e / "lang"), "--config", str(conf / "lang.yaml")],
        [HFASR, "gmm", "--data-dir", str(d), "--task", "yesno", "--lang", str(e / "lang"), "--out", str(e / "gmm"),
         "--config", str(conf / "gmm.yaml"), "--quiet"],
        [HFASR, "train", "--criterion", "ce", "--optimizer", "adam", "--data-dir", str(d), "--task", "yesno",
         "--ali-dir", str(e / "gmm"), "--out", str(e / "ce"), "--config", str(conf / "train_ce.yaml"), "--quiet"],
        [HFASR, "loglikes", "--model", str(e / "ce" / "final.pt"), "--data-dir", str(d), "--task", "yesno",
         "--split", "dev", "--out", str(e / "ce" / "loglikes_dev.pt"), "--text", str(e / "ce" / "ref_dev.txt")],
        [HFASR, "loglikes", "--model", str(e / "ce" / "final.pt"), "--data-dir", str(d), "--task", "yesno",
         "--split", "test", "--out", str(e / "ce" / "loglikes_test.pt"), "--text", str(e / "ce" / "ref_test.txt")],
        [HFASR, "lattices", "--model", str(e / "ce" / "final.pt"), "--data-dir", str(d), "--task", "yesno",
         "--lang", str(e / "lang"), "--gmm-dir", str(e / "gmm"), "--out", str(e / "lats"), "--quiet"],
        smbr_cmd(base, updates=1),
        ce_hf_cmd(base),
        ctc_cmd(base),
    ]
    for i, cmd in enumerate(steps):
        print(f"  workspace {i + 1}/{len(steps)}: hfasr {cmd[1]}", flush=True)
        must(cmd, base)
    (base / "DONE").write_text("ok\n")
    return base


def smbr_cmd(ws: Path, updates: int | None = None, resume: bool = True, out: str = "smbr") -> list[str]:
    e = ws / "exp"
    cmd = [HFASR, "train", "--criterion", "smbr", "--optimizer", "hf", "--init", str(e / "ce" / "final.pt"),
           "--lat-dir", str(e / "lats"), "--data-dir", str(ws / "data"), "--task", "yesno", "--ali-dir", str(e / "gmm"),
           "--graph-dir", str(e / "gmm" / "graph"), "--model-dir", str(e / "gmm"), "--out", str(e / out),
           "--config", str(ws / "conf" / "seq_smbr_hf.yaml"), "--quiet"]
    if updates is not None:
        cmd += ["--updates", str(updates)]
    return cmd + (["--resume"] if resume else [])


def ce_cmd(ws: Path, out: str = "ce2", extra: list[str] | None = None) -> list[str]:
    return [HFASR, "train", "--criterion", "ce", "--optimizer", "adam", "--data-dir", str(ws / "data"), "--task", "yesno",
            "--ali-dir", str(ws / "exp" / "gmm"), "--out", str(ws / "exp" / out),
            "--config", str(ws / "conf" / "train_ce.yaml"), "--quiet", *(extra or [])]


def ce_hf_cmd(ws: Path, out: str = "ce_hf") -> list[str]:
    return [HFASR, "train", "--criterion", "ce", "--optimizer", "hf", "--data-dir", str(ws / "data"), "--task", "yesno",
            "--ali-dir", str(ws / "exp" / "gmm"), "--out", str(ws / "exp" / out),
            "--config", str(ws / "conf" / "train_ce_hf.yaml"), "--quiet"]


def ctc_cmd(ws: Path, out: str = "ctc") -> list[str]:
    return [HFASR, "train", "--criterion", "ctc", "--model", "dnn", "--optimizer", "hf", "--data-dir", str(ws / "data"),
            "--task", "yesno", "--lang", str(ws / "exp" / "lang"), "--out", str(ws / "exp" / out),
            "--config", str(ws / "conf" / "ctc_dnn_hf.yaml"), "--quiet"]


def loglikes_cmd(ws: Path, split: str = "test", model: str = "ce/final.pt", out: str = "ll.pt") -> list[str]:
    return [HFASR, "loglikes", "--model", str(ws / "exp" / model), "--data-dir", str(ws / "data"), "--task", "yesno",
            "--split", split, "--out", str(ws / "exp" / "probe" / out)]


def decode_cmd(ws: Path) -> list[str]:
    ce = ws / "exp" / "ce"
    return [HFASR, "decode", "--loglikes", str(ce / "loglikes_test.pt"), "--ref", str(ce / "ref_test.txt"),
            "--dev-loglikes", str(ce / "loglikes_dev.pt"), "--dev-ref", str(ce / "ref_dev.txt"),
            "--graph-dir", str(ws / "exp" / "gmm" / "graph"), "--model-dir", str(ws / "exp" / "gmm"),
            "--out", str(ws / "exp" / "probe_decode"), "--set", "test"]


def corpus_copy(work: Path, name: str, src: Path = YESNO) -> Path:
    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        (d / p.name).symlink_to(p.resolve())
    return d


# --------------------------------------------------------------------------------- probes
@dataclass
class Probe:
    cls: str
    name: str
    setup: Callable[[Path], list[str]]  # workspace copy -> command (run in the copy)
    ok_if_exit0: Callable[[Path, subprocess.CompletedProcess], bool] | None = None  # a correct exit 0
    watch: list[str] = field(default_factory=list)  # dirs (relative) that a failure must leave unchanged
    must_name: str = ""  # a string the error must contain (file / utterance / key); "" = any
    shell_prefix: str = ""
    rerun_ok: bool = False  # after the error, the same command without shell_prefix (disk freed) must succeed


def _evil(rel: str, cmd: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        write_evil(ws / rel)
        return cmd(ws)
    return setup


def _trunc(rel: str, cmd: Callable[[Path], list[str]], frac: float = 0.5) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        truncate(ws / rel, frac)
        return cmd(ws)
    return setup


def _config(conf: str, text: str, cmd: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        (ws / "conf" / conf).write_text(text)
        return cmd(ws)
    return setup


def _features_cmd(ws: Path, out: str = "data") -> list[str]:
    return [HFASR, "features", str(ws / out), "--task", "yesno", "--config", str(ws / "conf" / "fbank.yaml"), "--quiet"]


def _prepare_cmd(corpus: Path, out: Path, *extra: str, name: str = "yesno") -> list[str]:
    return [HFASR, "prepare", name, "--corpus-dir", str(corpus), "--out", str(out), *extra]


def _fresh_prepared(ws: Path) -> Path:
    """ws/data2: prepare only (no features yet)."""
    must(_prepare_cmd(YESNO, ws / "data2"), ws)
    return ws / "data2"


def _wav_stereo(ws: Path) -> Path:
    c = corpus_copy(ws, "corpus")
    name = sorted(c.iterdir())[5].name
    (c / name).unlink()
    x, sr = sf.read(YESNO / name)
    sf.write(c / name, np.stack([x, x], 1), sr)
    return c


def _wav_16k(ws: Path) -> Path:
    c = corpus_copy(ws, "corpus")
    name = sorted(c.iterdir())[7].name
    (c / name).unlink()
    x, sr = sf.read(YESNO / name)
    sf.write(c / name, np.repeat(x, 2), 2 * sr)
    return c


def _wav_nan(ws: Path) -> Path:
    c = corpus_copy(ws, "corpus")
    name = sorted(c.iterdir())[9].name
    (c / name).unlink()
    x, sr = sf.read(YESNO / name)
    x = x.astype(np.float32)
    x[100:200] = np.nan
    sf.write(c / name, x, sr, subtype="FLOAT")
    return c


def _skipped_lists(ws: Path, out: str, what: str) -> bool:
    p = ws / out / "skipped.txt"
    return p.is_file() and what in p.read_text()


def _corrupt_after_prepare(kind: str, split: str = "test") -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        c = corpus_copy(ws, "corpus")
        must(_prepare_cmd(c, ws / "data2"), ws)
        from lhotse import CutSet
        cut = next(iter(CutSet.from_file(ws / "data2" / f"yesno_cuts_{split}.jsonl.gz")))
        wav = Path(cut.recording.sources[0].source)
        target = c / wav.name
        x, sr = sf.read(YESNO / wav.name)
        target.unlink()
        if kind == "truncated":
            target.write_bytes((YESNO / wav.name).read_bytes()[:60])
        else:  # NaN samples
            x = x.astype(np.float32)
            x[500:900] = np.nan
            sf.write(target, x, sr, subtype="FLOAT")
        return _features_cmd(ws, "data2")
    return setup


def _empty_split(ws: Path) -> list[str]:
    from lhotse import CutSet
    d = _fresh_prepared(ws)
    CutSet.from_cuts([]).to_file(d / "yesno_cuts_test.jsonl.gz")
    return _features_cmd(ws, "data2")


def _nan_feats(split: str, value: float, cmd: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def setup(ws: Path) -> list[str]:
        tamper_features(ws, split, value)
        return cmd(ws)
    return setup


def _loglikes_nan(ws: Path) -> list[str]:
    import torch
    p = ws / "exp" / "ce" / "loglikes_test.pt"
    d = torch.load(p, weights_only=True)
    d["loglikes"][1][2:4] = float("nan")
    torch.save(d, p)
    return decode_cmd(ws)


def _concurrent(ws: Path) -> list[str]:
    """Start a CE run on exp/conc in the background; the probe's command is a second one."""
    (ws / "conf" / "long.yaml").write_text(TINY["train_ce.yaml"].replace("epochs: 2", "epochs: 150") + "lr_schedule: constant\n")
    first = subprocess.Popen([*ce_cmd(ws, "conc")[:-3], "--config", str(ws / "conf" / "long.yaml"), "--quiet"], cwd=ws,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    (ws / "first.pid").write_text(str(first.pid))
    deadline = time.time() + 120
    while time.time() < deadline and not (ws / "exp" / "conc" / "config.yaml").exists():
        time.sleep(0.2)
    _BG[str(ws)] = first
    return [*ce_cmd(ws, "conc")[:-3], "--config", str(ws / "conf" / "long.yaml"), "--quiet", "--resume"]


_BG: dict[str, subprocess.Popen] = {}


def _concurrent_ok(ws: Path) -> bool:
    """After the second run: the first one must finish cleanly with one run's history."""
    first = _BG.pop(str(ws))
    first.wait(timeout=600)
    hist = (ws / "exp" / "conc" / "history.jsonl").read_text().splitlines()
    updates = [json.loads(x)["update"] for x in hist if x.strip()]
    return first.returncode == 0 and updates == list(range(len(updates)))


def _manifests_ok(ws: Path, out: str = "data2") -> bool:
    d = ws / out
    ms = list(d.glob("yesno_feats_*.jsonl.gz"))
    if len(ms) != 3:
        return False
    for m in ms:
        try:
            with gzip.open(m, "rt") as f:
                if not any(line.strip() for line in f):
                    return False
        except (OSError, EOFError):
            return False
    return True


def _ctc_trained(ws: Path, r: subprocess.CompletedProcess) -> bool:
    hist = [json.loads(x) for x in (ws / "exp" / "ctc_probe" / "history.jsonl").read_text().splitlines() if x.strip()]
    return len(hist) > 1 and hist[-1]["dev_obj"] < hist[0]["dev_obj"]


def probes() -> list[Probe]:
    P = Probe
    return [
        # --- code execution: a tampered pickle must never run
        P("code execution", "checkpoint.pt on sMBR --resume", _evil("exp/smbr/checkpoint.pt", lambda w: smbr_cmd(w, 2)),
          must_name="checkpoint.pt"),
        P("code execution", "checkpoint.pt on CE-HF --resume",
          _evil("exp/ce_hf/checkpoint.pt", lambda w: ce_hf_cmd(w) + ["--resume", "--updates", "3"]), must_name="checkpoint.pt"),
        P("code execution", "checkpoint.pt on CTC --resume",
          _evil("exp/ctc/checkpoint.pt", lambda w: ctc_cmd(w) + ["--resume", "--updates", "3"]), must_name="checkpoint.pt"),
        P("code execution", "final.pt in loglikes", _evil("exp/ce/final.pt", loglikes_cmd), must_name="final.pt"),
        P("code execution", "prior.pt in loglikes", _evil("exp/ce/prior.pt", loglikes_cmd), must_name="prior.pt"),
        P("code execution", "final.pt as sMBR --init", _evil("exp/ce/final.pt", lambda w: smbr_cmd(w, 1, out="smbr_p")),
          must_name="final.pt"),
        P("code execution", "lattices in sMBR", _evil("exp/lats/lats_train.1.pt", lambda w: smbr_cmd(w, 1, out="smbr_p")),
          must_name="lats_train.1.pt"),
        P("code execution", "alignments in CE", _evil("exp/gmm/ali_train.pt", ce_cmd), must_name="ali_train.pt"),
        P("code execution", "loglikes in decode", _evil("exp/ce/loglikes_test.pt", decode_cmd), must_name="loglikes_test.pt"),
        P("code execution", "CMVN stats in CE", _evil("data/yesno_stats.pt", ce_cmd), must_name="yesno_stats.pt"),
        # --- audio at prepare
        P("bad audio", "stereo wav", lambda w: _prepare_cmd(_wav_stereo(w), w / "d3"), must_name=".wav"),
        P("bad audio", "stereo wav --skip-bad", lambda w: _prepare_cmd(_wav_stereo(w), w / "d3", "--skip-bad"),
          ok_if_exit0=lambda w, r: _skipped_lists(w, "d3", ".wav")),
        P("bad audio", "16 kHz among 8 kHz", lambda w: _prepare_cmd(_wav_16k(w), w / "d3"), must_name=".wav"),
        P("bad audio", "NaN samples", lambda w: _prepare_cmd(_wav_nan(w), w / "d3"), must_name=".wav"),
        P("bad audio", "FSDD duplicate recording id",
          lambda w: [HFASR, "prepare", "fsdd", "--corpus-dir", str(_fsdd_dup_dir(w)), "--out", str(w / "d3")],
          must_name="jackson"),
        P("bad audio", "wav truncated after prepare", _corrupt_after_prepare("truncated"), watch=["data2"], must_name=".wav"),
        P("bad audio", "NaN wav after prepare", _corrupt_after_prepare("nan"), watch=["data2"]),
        # --- partial outputs
        P("partial outputs", "features: test split fails", _corrupt_after_prepare("truncated", "test"), watch=["data2"]),
        P("partial outputs", "features: empty split", _empty_split, watch=["data2"], must_name="test"),
        P("partial outputs", "features: full disk", lambda w: (_fresh_prepared(w), _features_cmd(w, "data2"))[1],
          ok_if_exit0=lambda w, r: _manifests_ok(w), watch=["data2"], shell_prefix="trap '' XFSZ; ulimit -f 8;"),
        P("partial outputs", "train: full disk at checkpoint", lambda w: ce_cmd(w, "ce_disk", ["--resume"]),
          shell_prefix="trap '' XFSZ; ulimit -f 30;", rerun_ok=True, must_name="checkpoint.pt"),
        P("partial outputs", "lang: full disk", lambda w: [HFASR, "lang", "--data-dir", str(w / "data"), "--task", "yesno",
                                                           "--out", str(w / "exp" / "lang"), "--config",
                                                           str(w / "conf" / "lang.yaml")],
          watch=["exp/lang"], shell_prefix="trap '' XFSZ; ulimit -f 0;"),
        P("partial outputs", "gmm: full disk", lambda w: [
            HFASR, "gmm", "--data-dir", str(w / "data"), "--task", "yesno", "--lang", str(w / "exp" / "lang"),
            "--out", str(w / "exp" / "gmm"), "--config", str(w / "conf" / "gmm.yaml"), "--quiet"],
          watch=["exp/gmm"], shell_prefix="trap '' XFSZ; ulimit -f 20;"),
        P("partial outputs", "lattices: full disk", lambda w: [
            HFASR, "lattices", "--model", str(w / "exp" / "ce" / "final.pt"), "--data-dir", str(w / "data"), "--task",
            "yesno", "--lang", str(w / "exp" / "lang"), "--gmm-dir", str(w / "exp" / "gmm"), "--out",
            str(w / "exp" / "lats"), "--lattice-beam", "5", "--quiet"],  # new options: every shard is redone
          watch=["exp/lats"], shell_prefix="trap '' XFSZ; ulimit -f 20;"),
        # --- out-of-range config values
        P("config", "num_mel_bins: -3", _config("fbank.yaml", "num_mel_bins: -3\n", lambda w: _features_cmd(w)),
          must_name="num_mel_bins", watch=["data"]),
        P("config", "frame_shift: 0", _config("fbank.yaml", "frame_shift: 0\n", lambda w: _features_cmd(w)),
          must_name="frame_shift", watch=["data"]),
        P("config", "fsdd conn_min_digits: 0", _config("fsdd.yaml", "conn_min_digits: 0\n", _fsdd_prepare),
          must_name="conn_min_digits"),
        P("config", "fsdd conn_min_digits > max", _config("fsdd.yaml", "conn_min_digits: 6\nconn_max_digits: 3\n",
                                                          _fsdd_prepare), must_name="conn_min_digits"),
        P("config", "synth num_train: -5", _config("synth.yaml", "num_train: -5\n", lambda w: [
            HFASR, "prepare", "synth", "--out", str(w / "syn"), "--config", str(w / "conf" / "synth.yaml")]),
          must_name="num_train"),
        P("config", "hf damping: -1", _config("train_ce_hf.yaml", TINY["train_ce_hf.yaml"].replace(
            "cg_max_iters: 10", "cg_max_iters: 10, damping: -1"), lambda w: ce_hf_cmd(w, "ce_hf2")), must_name="damping"),
        P("config", "dnn hidden_dim: 0", _config("train_ce.yaml", TINY["train_ce.yaml"].replace("hidden_dim: 64",
                                                                                                "hidden_dim: 0"), ce_cmd),
          must_name="hidden_dim"),
        # --- truncated / tampered inputs
        P("truncated input", "feats manifest in CE", _trunc("data/yesno_feats_train.jsonl.gz", ce_cmd),
          must_name="yesno_feats_train"),
        P("truncated input", "HCLG.fst in decode", _trunc("exp/gmm/graph/HCLG.fst", decode_cmd), must_name="HCLG.fst"),
        P("truncated input", "G.fst in gmm", _trunc("exp/lang/G.fst", lambda w: [
            HFASR, "gmm", "--data-dir", str(w / "data"), "--task", "yesno", "--lang", str(w / "exp" / "lang"),
            "--out", str(w / "exp" / "gmm2"), "--config", str(w / "conf" / "gmm.yaml"), "--quiet"]), must_name="G.fst"),
        P("truncated input", "prior.pt in loglikes", _trunc("exp/ce/prior.pt", loglikes_cmd), must_name="prior.pt"),
        P("truncated input", "loglikes in decode", _trunc("exp/ce/loglikes_test.pt", decode_cmd),
          must_name="loglikes_test.pt"),
        P("truncated input", "CMVN stats in CE", _trunc("data/yesno_stats.pt", ce_cmd),
          must_name="yesno_stats.pt"),
        P("truncated input", "checkpoint.pt on --resume", _trunc("exp/ce_hf/checkpoint.pt",
                                                                 lambda w: ce_hf_cmd(w) + ["--resume", "--updates", "3"]),
          must_name="checkpoint.pt"),
        # --- non-finite values
        P("non-finite", "NaN in a test cut: loglikes", _nan_feats("test", float("nan"), loglikes_cmd), must_name="_"),
        P("non-finite", "NaN in a train cut: CE-HF", _nan_feats("train", float("nan"), lambda w: ce_hf_cmd(w, "ce_hf3")),
          must_name="_"),
        P("non-finite", "NaN in a train cut: sMBR-HF", _nan_feats("train", float("nan"),
                                                                 lambda w: smbr_cmd(w, 1, out="smbr_p")), must_name="_"),
        P("non-finite", "1e30 in a train cut: CTC-HF", _nan_feats("train", 1e30, lambda w: ctc_cmd(w, "ctc_probe")),
          ok_if_exit0=_ctc_trained),
        P("non-finite", "NaN in a loglikes file: decode", _loglikes_nan, must_name="_"),
        # --- concurrency
        P("concurrency", "two trains on one --out", _concurrent, ok_if_exit0=None, must_name="in use"),
    ]


def _fsdd_prepare(ws: Path) -> list[str]:
    return [HFASR, "prepare", "fsdd", "--corpus-dir", str(FSDD.parent), "--out", str(ws / "d3"),
            "--config", str(ws / "conf" / "fsdd.yaml")]


def _fsdd_dup_dir(ws: Path) -> Path:
    """An FSDD corpus dir (``recordings/`` inside) with a duplicate id ``1_jackson_01``."""
    root = ws / "fsdd"
    root.mkdir(exist_ok=True)
    rec = corpus_copy(root, "recordings", FSDD)
    (rec / "1_jackson_01.wav").symlink_to((FSDD / "1_jackson_1.wav").resolve())
    return root


def classify(p: Probe, ws: Path, r: subprocess.CompletedProcess, before: dict) -> tuple[str, str]:
    err = r.stderr + r.stdout
    last = [ln for ln in err.splitlines() if ln.startswith("error:")]
    detail = (last[-1] if last else err.strip().splitlines()[-1] if err.strip() else "")[:160]
    if (ws / MARKER).exists() or any(ws.rglob(MARKER)):
        return "PAYLOAD RAN", detail
    if "Traceback (most recent call last)" in err:
        tb = [ln for ln in err.splitlines() if ln and not ln.startswith(" ")]
        return "TRACEBACK", (tb[-1] if tb else detail)[:160]
    if p.name == "two trains on one --out":
        ok = r.returncode != 0 and bool(last) and p.must_name in last[-1] and _concurrent_ok(ws)
        return ("clean error" if ok else "WRONG"), detail
    if r.returncode == 0:
        if p.ok_if_exit0 is not None and p.ok_if_exit0(ws, r):
            return "handled", (detail or "exit 0, correct result")
        return "WRONG", "exit 0: " + (detail or "no error")
    if not last:
        return "WRONG", f"exit {r.returncode} without an error: line: {detail}"
    if p.must_name and p.must_name not in last[-1]:
        return "WRONG", f"error does not name '{p.must_name}': {detail}"
    for rel in p.watch:
        d = ws / rel
        now = snapshot(d)
        if now != before.get(rel, {}):
            changed = sorted(set(now.items()) ^ set(before.get(rel, {}).items()))
            return "WRONG", f"{rel} changed: {[c[0] for c in changed][:4]}; {detail}"
    tmps = temp_files(ws / "exp") + temp_files(ws / "data") + [t for t in (temp_files(ws / "data2") if (ws / "data2").exists() else [])]
    if tmps:
        return "WRONG", f"temp files left: {tmps[:3]}; {detail}"
    if p.rerun_ok:
        again = run(_unprefixed(r) if r.args[0] == "bash" else list(r.args), ws)
        if again.returncode != 0:
            return "WRONG", f"the rerun after the error failed: {(again.stderr.strip().splitlines() or [''])[-1][:120]}"
    return "clean error", detail


def _unprefixed(r: subprocess.CompletedProcess) -> list[str]:
    """The hfasr command of a ``bash -c 'PREFIX cmd...'`` run, without the prefix."""
    import shlex

    line = r.args[2]
    return shlex.split(line[line.index(f"'{HFASR}'"):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hfasr_probes"))
    ap.add_argument("--only", default="", help="run the probes whose name contains this")
    ap.add_argument("--out", type=Path, help="write the table (markdown) here")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    print("building the workspace (yesno, tiny models)", flush=True)
    base = build_workspace(args.work)
    rows = []
    todo = [p for p in probes() if args.only in p.name]
    for i, p in enumerate(todo, 1):
        ws = args.work / f"p{i:02d}"
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(base, ws, symlinks=True)
        # paths inside manifests / configs point at base: rewrite them to this copy
        for m in list((ws / "data").glob("*.jsonl.gz")) + list((ws / "exp").rglob("config.yaml")):
            _rebase(m, base, ws)
        t0 = time.time()
        try:
            cmd = p.setup(ws)
            before = {rel: snapshot(ws / rel) for rel in p.watch}
            r = run(cmd, ws, shell_prefix=p.shell_prefix)
            outcome, detail = classify(p, ws, r, before)
        except Exception as e:  # noqa: BLE001 -- a probe's own setup failed: report it, do not hide it
            outcome, detail = "SETUP FAILED", f"{type(e).__name__}: {e}"[:160]
        rows.append((p.cls, p.name, outcome, detail))
        print(f"[{i}/{len(todo)}] {p.cls} | {p.name} | {outcome} | {detail} ({time.time() - t0:.0f} s)", flush=True)
    text = table(rows)
    print(text)
    if args.out:
        import platform
        import subprocess as sp

        rev = sp.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True,
                     check=False).stdout.strip()
        head = (f"# bench/probes.py: hostile-user probes of the command line\n\n"
                f"`python bench/probes.py --work {args.work} --out {args.out}`, "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
                f"Python {platform.python_version()}, hfasr {rev}. Outcomes: `clean error` = exit 2 with an "
                f"`error:` line naming the item, no traceback, the watched outputs unchanged and no temporary "
                f"file left; `handled` = exit 0 with a correct result. Full disks are `ulimit -f` limits.\n\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(head + text)
    bad = [r for r in rows if r[2] not in ("clean error", "handled")]
    return 1 if bad else 0


def _rebase(path: Path, old: Path, new: Path) -> None:
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            text = f.read()
        text = text.replace(str(old), str(new))
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(path.read_text().replace(str(old), str(new)))


def table(rows: list[tuple[str, str, str, str]]) -> str:
    lines = ["| class | probe | outcome | message |", "|---|---|---|---|"]
    lines += [f"| {c} | {n} | {o} | {d.replace('|', '/')} |" for c, n, o, d in rows]
    by: dict[str, list[int]] = {}
    for c, _, o, _ in rows:
        k = by.setdefault(c, [0, 0])
        k[0] += 1
        k[1] += o in ("clean error", "handled")
    lines += ["", "| class | cases | clean errors or handled |", "|---|---|---|"]
    lines += [f"| {c} | {n} | {k} |" for c, (n, k) in by.items()]
    total = sum(n for n, _ in by.values()), sum(k for _, k in by.values())
    lines += [f"| **total** | {total[0]} | {total[1]} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
