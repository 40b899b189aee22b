"""Tests of the embedded eSpeak NG corpus ``synth`` (hfasr/data/synth.py): small and fast."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hfasr.config import load_config
from hfasr.data.synth import (
    SPLITS,
    SynthConfig,
    load_vocabulary,
    plan_utterance,
    prepare_synth,
    synthesize,
    to_ssml,
)
from hfasr.errors import ConfigError, DataError

SMALL = {"num_train": 6, "num_dev": 3, "num_test": 3}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_a")
    return out, prepare_synth(out, SynthConfig(**SMALL), progress=False)


def _wav_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "synth" / "wavs").rglob("*.wav"))}


def _manifest(cuts: dict) -> dict:
    return {s: [c.to_dict() for c in cuts[s]] for s in SPLITS}


def _strip_paths(d: dict, out: Path) -> str:
    return repr(d).replace(str(out), "<out>")


def test_layout_and_ids(corpus):
    out, cuts = corpus
    assert set(cuts) == set(SPLITS)
    for split, n in (("train", 6), ("dev", 3), ("test", 3)):
        ids = [c.id for c in cuts[split]]
        assert ids == [f"synth-{split}-{i:06d}" for i in range(1, n + 1)]
        for c in cuts[split]:
            assert (out / "synth" / "wavs" / split / f"{c.id}.wav").is_file()
            sup = c.supervisions[0]
            assert sup.id == sup.recording_id == c.id and sup.start == 0 and sup.channel == 0
            assert sup.language == "English" and abs(sup.duration - c.duration) < 1e-6
    assert not list((out / "synth").rglob("*.tmp*"))


def test_deterministic_across_runs_and_jobs(corpus, tmp_path):
    out_a, cuts_a = corpus
    out_b = tmp_path / "b"
    cuts_b = prepare_synth(out_b, SynthConfig(**SMALL), num_jobs=2, progress=False)
    assert _wav_bytes(out_a) == _wav_bytes(out_b)
    assert _strip_paths(_manifest(cuts_a), out_a) == _strip_paths(_manifest(cuts_b), out_b)

    out_c = tmp_path / "c"
    cuts_c = prepare_synth(out_c, SynthConfig(seed=1, **SMALL), progress=False)
    wa, wc = _wav_bytes(out_a), _wav_bytes(out_c)
    assert all(wa[k] != wc[k] for k in wa)
    texts = lambda cuts: [c.supervisions[0].text for s in SPLITS for c in cuts[s]]
    assert texts(cuts_a) != texts(cuts_c)


def test_speaker_independent_splits(corpus):
    _, cuts = corpus
    spk = {s: {c.supervisions[0].speaker for c in cuts[s]} for s in SPLITS}
    assert not spk["train"] & spk["test"] and not spk["dev"] & spk["test"]
    assert not spk["train"] & spk["dev"]
    cfg = SynthConfig()
    full = {s: set(cfg.speakers(s)) for s in SPLITS}
    assert not full["train"] & full["test"] and not full["dev"] & full["test"]
    variant = lambda spks: {s.partition("+")[2] for s in spks}
    assert not variant(full["train"]) & variant(full["test"])
    assert not variant(full["train"]) & variant(full["dev"])
    for s in SPLITS:
        assert spk[s] <= full[s]


def test_overlapping_variants_rejected(tmp_path):
    with pytest.raises(ValueError, match="disjoint"):
        SynthConfig(test_variants=["m1"])
    cfg_file = tmp_path / "synth.yaml"
    cfg_file.write_text("num_train: 3\ndev_variants: [m7]\n")
    with pytest.raises(ConfigError, match="synth.yaml"):
        load_config(SynthConfig, cfg_file)
    cfg_file.write_text("num_train: 3\nmin_snr_db: 5\nlanguages: [en-us]\n")
    cfg = load_config(SynthConfig, cfg_file)
    assert cfg.num_train == 3 and cfg.min_snr_db == 5.0 and cfg.speakers("test")[0] == "en-us+m7"


def test_texts_use_vocabulary(corpus):
    _, cuts = corpus
    vocab = load_vocabulary()
    for s in SPLITS:
        for c in cuts[s]:
            text = c.supervisions[0].text
            assert text == " ".join(text.split()) and text == text.upper()
            assert set(text.split()) <= vocab.words, text
    # a larger sample of prompts only (no audio): every type occurs, only vocabulary words
    plans = [plan_utterance(SynthConfig(), vocab, "train", i) for i in range(500)]
    assert {p.kind for p in plans} == set(vocab.types)
    assert all(set(p.words) <= vocab.words and 1 <= len(p.words) <= 8 for p in plans)
    assert {"A", "Z", "OH", "ZERO", "ENTER", "RUBOUT", "YES", "NO"} <= vocab.words


def test_audio_format_level_and_duration(corpus):
    out, cuts = corpus
    for s in SPLITS:
        for c in cuts[s]:
            audio, sr = sf.read(out / "synth" / "wavs" / s / f"{c.id}.wav", dtype="float32")
            info = sf.info(out / "synth" / "wavs" / s / f"{c.id}.wav")
            assert sr == 16000 and info.subtype == "PCM_16" and audio.ndim == 1
            assert c.sampling_rate == 16000 and c.num_samples == len(audio)
            assert 0.3 <= c.duration <= 15.0
            assert abs(np.abs(audio).max() - 0.7) < 1e-3  # peak-normalized
            assert np.sqrt(np.mean(audio**2)) > 0.02  # not silent
            n_words = len(c.supervisions[0].text.split())
            assert 0.15 * n_words < c.duration < 1.0 * n_words + 1.0


def test_duration_grows_with_words(tmp_path):
    cfg = SynthConfig(num_train=40, num_dev=0, num_test=0)
    cuts = prepare_synth(tmp_path, cfg, progress=False)["train"]
    n = np.array([len(c.supervisions[0].text.split()) for c in cuts])
    d = np.array([c.duration for c in cuts])
    assert np.corrcoef(n, d)[0, 1] > 0.6
    assert d[n >= 6].mean() > d[n <= 3].mean() + 0.8


def test_snr_roughly_as_planned(corpus):
    out, cuts = corpus
    cfg, vocab = SynthConfig(**SMALL), load_vocabulary()
    errors = []
    for s in SPLITS:
        for i, c in enumerate(cuts[s]):
            plan = plan_utterance(cfg, vocab, s, i)
            assert c.supervisions[0].custom["snr_db"] == round(plan.snr_db, 2)
            x, sr = sf.read(out / "synth" / "wavs" / s / f"{c.id}.wav", dtype="float64")
            lead, trail = round(plan.lead_silence * sr), round(plan.trail_silence * sr)
            noise = np.concatenate([x[: lead - 80], x[len(x) - trail + 80 :]])
            p_noise = np.mean(noise**2)
            assert p_noise > 0  # noise is present
            p_speech = np.mean(x[lead : len(x) - trail] ** 2) - p_noise
            errors.append(10 * math.log10(p_speech / p_noise) - plan.snr_db)
    assert np.median(np.abs(errors)) < 2.0 and max(np.abs(errors)) < 5.0, errors


def test_letters_are_spelled():
    assert to_ssml("A B ONE TWO C") == (
        '<speak><say-as interpret-as="characters">A B</say-as> one two '
        '<say-as interpret-as="characters">C</say-as></speak>'
    )
    dur = {}
    for text in ("A", "A B C", "A B C D E F G", "W", "ONE TWO THREE"):
        audio, sr = synthesize(text, "en-us+m3", 175, 50)
        assert sr == 22050 and audio.dtype == np.float32 and np.abs(audio).max() > 0.05
        dur[text] = len(audio) / sr
    assert dur["A B C"] > dur["A"] + 0.4
    assert dur["A B C D E F G"] > dur["A B C"] + 0.8
    assert dur["W"] > dur["A"] + 0.1  # "double-u" is three syllables


def test_missing_voices_are_reported(tmp_path):
    with pytest.raises(DataError, match="variant 'nosuchvariant'"):
        synthesize("A", "en-us+nosuchvariant", 175, 50)
    with pytest.raises(DataError, match="voice 'xx-nosuch'"):
        synthesize("A", "xx-nosuch", 175, 50)
    cfg = SynthConfig(num_train=1, num_dev=1, num_test=1, test_variants=["nosuchvariant"])
    with pytest.raises(DataError, match="nosuchvariant"):
        prepare_synth(tmp_path, cfg, progress=False)
