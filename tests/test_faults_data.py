"""Fault injection for the data stages (issue 15): bad audio at ``prepare``, bad audio / values at
``features``, truncated manifests and stats, a full disk, and staged (all-or-nothing) outputs.

Every case runs on a copy of yesno (60 small 8 kHz wavs) or a few FSDD files, broken on purpose;
each asserts the error type, that the message names the file / utterance, and what is left on disk.
"""

from __future__ import annotations

import errno
import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hfasr.cli import main
from hfasr.data.corpora import (
    BadItems,
    _fsdd_files,
    load_cuts,
    manifest_path,
    prepare_corpus,
    write_cuts,
)
from hfasr.data.features import (
    FeatureConfig,
    check_features,
    compute_features,
    load_stats,
    save_stats,
)
from hfasr.errors import DataError

CFG = FeatureConfig(num_mel_bins=13)


@pytest.fixture
def waves(tmp_path, yesno_dir) -> Path:
    """A private copy of yesno's 60 wavs (sorted; odd positions are lhotse's test split)."""
    d = tmp_path / "waves"
    shutil.copytree(yesno_dir, d)
    return d


def wavs(d: Path) -> list[Path]:
    return sorted(d.glob("*.wav"))


def leftovers(root: Path) -> list[Path]:
    """Temporary files or staging directories left anywhere under (or beside) ``root``."""
    return [p for p in root.parent.rglob("*") if ".tmp." in p.name or ".staging." in p.name]


def outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*") if p.is_file())


def tiny(out: Path, n: int = 3) -> None:
    """Cut the prepared yesno manifests down to ``n`` cuts per split (fast features)."""
    for split in ("train", "dev", "test"):
        p = manifest_path(out, "yesno", split)
        write_cuts(load_cuts(p).subset(first=n), p)


# ------------------------------------------------------------------------------ prepare: audio


def test_stereo_is_an_error_naming_the_file(waves, tmp_path):
    w = wavs(waves)[4]
    a, sr = sf.read(str(w), dtype="int16")
    sf.write(str(w), np.stack([a, a // 2], axis=1), sr, subtype="PCM_16")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{w}: 2 audio channels.*downmix: true"):
        prepare_corpus("yesno", out, corpus_dir=waves)
    assert outputs(out) == [] and not leftovers(out)


def test_stereo_downmix_warns_and_uses_a_mono_copy(waves, tmp_path, caplog):
    w = wavs(waves)[4]
    a, sr = sf.read(str(w), dtype="int16")
    sf.write(str(w), np.stack([a, a // 2], axis=1), sr, subtype="PCM_16")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        tasks = prepare_corpus("yesno", out, corpus_dir=waves, downmix=True)
    assert f"{w}: 2 channels downmixed" in caplog.text
    cut = next(c for c in tasks["yesno"]["train"] if c.recording.id == w.stem)
    src = Path(cut.recording.sources[0].source)
    assert src == out / "downmix" / "yesno" / w.name and sf.info(str(src)).channels == 1
    mono, _ = sf.read(str(src), dtype="int16")
    assert np.abs(mono.astype(int) - (a.astype(int) + a // 2) / 2).max() <= 1
    assert len(tasks["yesno"]["train"]) == 30 and len(tasks["yesno"]["test"]) == 30


def test_cli_stereo_downmix_switch_and_error(waves, tmp_path, capsys):
    w = wavs(waves)[7]
    a, sr = sf.read(str(w), dtype="int16")
    sf.write(str(w), np.stack([a, a], axis=1), sr, subtype="PCM_16")
    assert main(["prepare", "yesno", "--corpus-dir", str(waves), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {w}: 2 audio channels" in capsys.readouterr().err
    assert main(["prepare", "yesno", "--corpus-dir", str(waves), "--out", str(tmp_path / "o"), "--downmix"]) == 0
    assert main(["prepare", "yesno", "--corpus-dir", str(waves), "--out", str(tmp_path / "o2"), "--skip-bad"]) == 0
    assert (tmp_path / "o2" / "skipped.txt").read_text().startswith(f"{w}\t{w}: 2 audio channels")


def test_sample_rate_mismatch(waves, tmp_path):
    w = wavs(waves)[10]
    a, _ = sf.read(str(w), dtype="int16")
    sf.write(str(w), a, 16000, subtype="PCM_16")
    with pytest.raises(DataError, match=rf"{w}: sampling rate 16000 Hz differs from the 8000 Hz .* of yesno"):
        prepare_corpus("yesno", tmp_path / "out", corpus_dir=waves)
    assert outputs(tmp_path / "out") == []
    tasks = prepare_corpus("yesno", tmp_path / "out", corpus_dir=waves, skip_bad=True)
    assert len(tasks["yesno"]["train"]) == 29 and len(tasks["yesno"]["test"]) == 30
    assert (tmp_path / "out" / "skipped.txt").read_text().startswith(f"{w}\t{w}: sampling rate 16000 Hz")


@pytest.mark.parametrize("value,match", [(np.nan, "non-finite"), (np.inf, "non-finite"),
                                         (1e30, "far beyond full scale")])
def test_float_wav_bad_samples(waves, tmp_path, value, match):
    w = wavs(waves)[3]
    a, sr = sf.read(str(w), dtype="float32")
    a[100:105] = value
    sf.write(str(w), a, sr, subtype="FLOAT")
    with pytest.raises(DataError, match=rf"{w}: .*{match}"):
        prepare_corpus("yesno", tmp_path / "out", corpus_dir=waves)
    assert outputs(tmp_path / "out") == []


def test_float_wav_in_range_is_fine(waves, tmp_path):
    w = wavs(waves)[3]
    a, sr = sf.read(str(w), dtype="float32")
    sf.write(str(w), a, sr, subtype="FLOAT")
    assert len(prepare_corpus("yesno", tmp_path / "out", corpus_dir=waves)["yesno"]["train"]) == 30


def test_fsdd_duplicate_recording_ids(fsdd_dir, tmp_path):
    d = tmp_path / "fsdd" / "recordings"
    d.mkdir(parents=True)
    for name in ("1_jackson_1.wav", "2_jackson_1.wav", "1_theo_3.wav"):
        shutil.copy(fsdd_dir / "recordings" / name, d / name)
    shutil.copy(fsdd_dir / "recordings" / "1_jackson_2.wav", d / "1_jackson_01.wav")
    with pytest.raises(DataError, match=rf"{d / '1_jackson_1.wav'} and {d / '1_jackson_01.wav'} get the same "
                                        r"recording id 'fsdd-jackson-1-01'"):
        prepare_corpus("fsdd", tmp_path / "out", corpus_dir=tmp_path / "fsdd")
    assert outputs(tmp_path / "out") == []
    bad = BadItems(skip_bad=True)
    items = _fsdd_files(tmp_path / "fsdd", bad)
    assert sorted(it[0].name for it in items) == ["1_jackson_01.wav", "1_theo_3.wav", "2_jackson_1.wav"]
    assert [i for i, _ in bad.items] == [str(d / "1_jackson_1.wav")]


# ------------------------------------------------------------------- prepare: staged outputs


def test_empty_split_leaves_previous_manifests(waves, tmp_path):
    out = tmp_path / "out"
    prepare_corpus("yesno", out, corpus_dir=waves)
    before = {n: (out / n).read_bytes() for n in outputs(out)}
    for w in wavs(waves)[1::2]:  # every test file
        w.write_bytes(b"junk")
    for w in wavs(waves)[0:4:2]:  # and two training files
        w.write_bytes(b"junk")
    with pytest.raises(DataError, match=r"the test split of yesno is empty \(32 bad item\(s\) skipped\)"):
        prepare_corpus("yesno", out, corpus_dir=waves, skip_bad=True)
    assert {n: (out / n).read_bytes() for n in outputs(out)} == before  # train/dev/skipped.txt untouched
    assert not leftovers(out)


def test_full_disk_at_prepare_is_a_clean_error(waves, tmp_path, monkeypatch):
    from lhotse import CutSet

    out = tmp_path / "out"
    real = CutSet.to_file
    calls = []

    def to_file(self, path):
        calls.append(path)
        if len(calls) == 2:  # the second manifest: the first is already staged
            Path(path).write_bytes(b"")  # a 0-byte file, as a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path)

    monkeypatch.setattr(CutSet, "to_file", to_file)
    with pytest.raises(DataError, match=rf"{out}/yesno_cuts_\w+\.jsonl\.gz: no space left on the device"):
        prepare_corpus("yesno", out, corpus_dir=waves)
    assert outputs(out) == [] and not leftovers(out)


# ------------------------------------------------------------------------- manifests, stats


@pytest.mark.parametrize("damage", ["truncate", "json", "empty"])
def test_corrupt_manifest_is_an_error_naming_it(waves, tmp_path, damage):
    out = tmp_path / "out"
    prepare_corpus("yesno", out, corpus_dir=waves)
    m = manifest_path(out, "yesno", "test")
    if damage == "truncate":
        m.write_bytes(m.read_bytes()[: m.stat().st_size // 2])
    elif damage == "json":
        m.write_bytes(gzip.compress(b'{"id": "x", "start": 0,\n'))
    else:
        m.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{m}: cannot read this manifest: it is truncated or corrupt"):
        load_cuts(m)
    with pytest.raises(DataError, match=rf"{m}: cannot read this manifest"):
        compute_features(out, "yesno", CFG, progress=False)
    assert not list(out.glob("yesno_feats_*")) and not (out / "yesno_stats.pt").exists()


def test_truncated_feature_manifest_at_training_load(waves, tmp_path):
    from hfasr.data.utterances import read_cuts

    out = tmp_path / "out"
    prepare_corpus("yesno", out, corpus_dir=waves)
    tiny(out)
    compute_features(out, "yesno", CFG, progress=False)
    assert len(read_cuts(out, "yesno", "test")[0]) == 3
    m = manifest_path(out, "yesno", "test", "feats")
    m.write_bytes(m.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"{m}: cannot read this manifest"):
        read_cuts(out, "yesno", "test")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "nan", "keys"])
def test_bad_stats_file(tmp_path, damage):
    p = tmp_path / "yesno_stats.pt"
    save_stats(p, torch.zeros(4), torch.ones(4))
    assert [t.tolist() for t in load_stats(p)] == [[0.0] * 4, [1.0] * 4]
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "garbage":
        p.write_bytes(b"\x80\x04not a torch file")
    elif damage == "nan":
        torch.save({"mean": torch.zeros(4), "std": torch.tensor([1.0, float("nan"), 1.0, 1.0])}, p)
    else:
        torch.save({"mean": torch.zeros(4)}, p)
    with pytest.raises(DataError, match=rf"{p}: .*CMVN statistics"):
        load_stats(p)


def test_check_features_names_the_frame():
    x = np.zeros((10, 3), dtype=np.float32)
    check_features(x, "u")
    x[4, 1] = 1e30
    with pytest.raises(DataError, match=r"utt-1: absurd feature value 1e\+30 .* first at frame 4"):
        check_features(x, "utt-1")
    x[2, 0] = np.nan
    with pytest.raises(DataError, match=r"utt-1: 1 non-finite .* first at frame 2"):
        check_features(x, "utt-1")


# ------------------------------------------------------------------------------ features


@pytest.fixture
def prepared(waves, tmp_path):
    out = tmp_path / "out"
    prepare_corpus("yesno", out, corpus_dir=waves)
    tiny(out)
    return out


def _corrupt(prepared: Path, split: str, how: str) -> tuple[str, Path]:
    """Break the audio of the first cut of ``split`` after prepare; return its id and file."""
    cut = next(iter(load_cuts(manifest_path(prepared, "yesno", split))))
    w = Path(cut.recording.sources[0].source)
    a, sr = sf.read(str(w), dtype="float32")
    if how == "nan":
        a[500:600] = np.nan
        sf.write(str(w), a, sr, subtype="FLOAT")
    elif how == "huge":
        a[500:600] = 1e30
        sf.write(str(w), a, sr, subtype="FLOAT")
    else:
        w.write_bytes(w.read_bytes()[:30])
    return cut.id, w


@pytest.mark.parametrize("how,match", [("nan", "non-finite"), ("huge", "far beyond full scale"),
                                       ("truncate", "audio could not be read")])
def test_features_bad_audio_after_prepare(prepared, how, match):
    uid, w = _corrupt(prepared, "test", how)
    with pytest.raises(DataError, match=rf"utterance '{uid}' \({w}\): .*{match}"):
        compute_features(prepared, "yesno", CFG, progress=False)
    # nothing new: no train/dev manifests a later stage would trust, no stats, no feats
    assert not list(prepared.glob("yesno_feats_*")) and not (prepared / "yesno_stats.pt").exists()
    assert not list((prepared / "feats").glob("*")) if (prepared / "feats").exists() else True
    assert not leftovers(prepared)


def test_features_skip_bad_lists_the_difference(prepared, capsys):
    uid, w = _corrupt(prepared, "test", "nan")
    assert main(["features", str(prepared), "--task", "yesno", "--quiet", "--skip-bad"]) == 0
    assert "skipped 1 bad cut(s)" in capsys.readouterr().out
    assert len(load_cuts(manifest_path(prepared, "yesno", "test", "feats"))) == 2  # 3 read = 2 written + 1 listed
    lines = (prepared / "yesno_feats_skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"test/{uid}\tutterance '{uid}' ({w})")


def test_features_failure_keeps_previous_features(prepared):
    first = compute_features(prepared, "yesno", CFG, progress=False)
    names = [manifest_path(prepared, "yesno", s, "feats") for s in ("train", "dev", "test")]
    before = {p: p.read_bytes() for p in [*names, prepared / "yesno_stats.pt"]}
    ref = next(iter(first["train"])).load_features()
    _corrupt(prepared, "test", "truncate")
    with pytest.raises(DataError):
        compute_features(prepared, "yesno", FeatureConfig(num_mel_bins=23), progress=False)
    assert {p: p.read_bytes() for p in before} == before
    again = next(iter(load_cuts(names[0])))
    np.testing.assert_array_equal(again.load_features(), ref)  # the archives were not overwritten
    assert not leftovers(prepared)


def test_features_full_disk(prepared, monkeypatch):
    import hfasr.data.features as F

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(F, "save_stats", full)
    with pytest.raises(DataError, match=rf"{prepared}: no space left on the device"):
        compute_features(prepared, "yesno", CFG, progress=False)
    assert not list(prepared.glob("yesno_feats_*")) and not leftovers(prepared)


@pytest.mark.slow  # worker start-up (spawn: torch + lhotse imports) dominates: ~20-40 s
def test_features_parallel_matches_serial(prepared, tmp_path):
    serial = compute_features(prepared, "yesno", CFG, progress=False)
    par = compute_features(prepared, "yesno", FeatureConfig(num_mel_bins=13, num_jobs=2), progress=False)
    for s in serial:
        assert [c.id for c in serial[s]] == [c.id for c in par[s]]
        for a, b in zip(serial[s], par[s]):
            np.testing.assert_array_equal(a.load_features(), b.load_features())


# ------------------------------------------------------------------ an4 and librispeech audio


def _tone(path: Path, sr: int = 16000, channels: int = 1, fmt: str = "WAV", seconds: float = 0.4) -> None:
    t = np.arange(int(seconds * sr)) / sr
    a = 0.3 * np.sin(2 * np.pi * 440 * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.stack([a] * channels, axis=1) if channels > 1 else a, sr, format=fmt, subtype="PCM_16")


@pytest.mark.parametrize("ext,fmt", [(".wav", "WAV"), (".sph", "NIST")])
def test_an4_stereo(tmp_path, ext, fmt):
    from hfasr.data.corpora import An4Utt, _an4_audio

    corpus, out = tmp_path / "an4", tmp_path / "out"
    src = corpus / "wav" / "an4_clstk" / "spk" / f"u1{ext}"
    _tone(src, channels=2, fmt=fmt)
    item = An4Utt("u1", "spk", "an4_clstk/spk/u1", "YES", "etc/an4_train.fileids:1")
    with pytest.raises(DataError, match=rf"{src}: 2 audio channels"):
        _an4_audio(corpus, item, out)
    mono = _an4_audio(corpus, item, out, allow_downmix=True)
    assert mono.is_relative_to(out) and sf.info(str(mono)).channels == 1


def _fake_librispeech(root: Path, odd: dict[str, dict]) -> Path:
    """Two parts x 2 utterances; ``odd`` maps an utterance to _tone() options."""
    for part, spk in (("train-clean-5", "100"), ("dev-clean-2", "200")):
        d = root / "LibriSpeech" / part / spk / "10"
        lines = []
        for i in range(2):
            uid = f"{spk}-10-{i:04d}"
            _tone(d / f"{uid}.flac", fmt="FLAC", **odd.get(uid, {}))
            lines.append(f"{uid} HELLO {('ONE', 'TWO')[i]}")
        (d / f"{spk}-10.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_stereo_and_rate(tmp_path):
    root = _fake_librispeech(tmp_path / "c", {"100-10-0001": {"channels": 2}})
    bad = root / "LibriSpeech" / "train-clean-5" / "100" / "10" / "100-10-0001.flac"
    with pytest.raises(DataError, match=rf"{bad}: 2 audio channels"):
        prepare_corpus("mini_librispeech", tmp_path / "o", corpus_dir=root)
    t = prepare_corpus("mini_librispeech", tmp_path / "o", corpus_dir=root, downmix=True)["librispeech"]
    cut = next(c for c in t["train"] if c.id.startswith("100-10-0001"))
    assert cut.recording.num_channels == 1 and cut.load_audio().shape[0] == 1
    root = _fake_librispeech(tmp_path / "c2", {"200-10-0000": {"sr": 8000}})
    with pytest.raises(DataError, match=r"200-10-0000\.flac: sampling rate 8000 Hz differs from the 16000 Hz"):
        prepare_corpus("mini_librispeech", tmp_path / "o2", corpus_dir=root)
    assert outputs(tmp_path / "o2") == []


def test_cli_features_bad_audio_exit_2(prepared, capsys):
    uid, w = _corrupt(prepared, "dev", "nan")
    assert main(["features", str(prepared), "--task", "yesno", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: utterance '{uid}' ({w}): " in err and "non-finite" in err and "Traceback" not in err
    assert not list(prepared.glob("yesno_feats_*"))
