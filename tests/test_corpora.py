"""Corpus preparation on the real corpora (yesno, FSDD, AN4) and on fake LibriSpeech / TIMIT trees."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import load_manifest

from hfasr.data.corpora import DIGIT_WORDS, manifest_path, prepare_corpus
from hfasr.errors import ConfigError, DataError, HfasrError


def _speakers(cuts):
    return {s.speaker for c in cuts for s in c.supervisions}


def write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, fmt: str | None = None, seed: int = 0) -> None:
    """A short noisy tone: valid audio for fake corpora."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    a = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), a.astype(np.float32), sr, format=fmt, subtype="PCM_16")


def test_yesno_lhotse_split(yesno_dir, tmp_path):
    tasks = prepare_corpus("yesno", tmp_path, corpus_dir=yesno_dir)
    y = tasks["yesno"]
    assert len(y["train"]) == 30 and len(y["test"]) == 30
    # lhotse's rule: sorted files, even positions train, odd test
    files = sorted(p.stem for p in yesno_dir.glob("*.wav"))
    assert sorted(c.recording.id for c in y["train"]) == files[::2]
    assert sorted(c.recording.id for c in y["test"]) == files[1::2]
    c = y["train"][0] if hasattr(y["train"], "__getitem__") else next(iter(y["train"]))
    assert c.supervisions[0].text == " ".join("YES" if b == "1" else "NO" for b in c.recording.id.split("_"))
    assert manifest_path(tmp_path, "yesno", "test").is_file()
    assert (tmp_path / "skipped.txt").read_text() == ""


def test_fsdd_three_tasks(fsdd_prepared):
    out, tasks = fsdd_prepared
    assert set(tasks) == {"fsdd_iso", "fsdd_spk", "fsdd_conn"}
    iso = tasks["fsdd_iso"]
    assert (len(iso["train"]), len(iso["dev"]), len(iso["test"])) == (2000, 250, 250)
    # own split: takes 0-4 are test
    assert all(int(c.recording.id.split("-")[-1]) < 5 for c in iso["test"])
    for task in ("fsdd_spk", "fsdd_conn"):
        t = tasks[task]
        assert _speakers(t["test"]) == {"theo"}
        assert not _speakers(t["train"]) & _speakers(t["test"])
        assert not _speakers(t["dev"]) & _speakers(t["test"])
        assert _speakers(t["dev"]) == {"jackson"}  # speaker-disjoint dev set
        assert not _speakers(t["train"]) & _speakers(t["dev"])
    assert len(tasks["fsdd_spk"]["train"]) == 1500 and len(tasks["fsdd_spk"]["test"]) == 500
    assert len(tasks["fsdd_spk"]["dev"]) == 500
    for split in ("train", "dev", "test"):
        assert manifest_path(out, "fsdd_conn", split).is_file()


def test_fsdd_connected_digits(fsdd_prepared):
    _, tasks = fsdd_prepared
    conn = tasks["fsdd_conn"]
    spk = tasks["fsdd_spk"]
    src_ids = {s: {c.recording.id for c in spk[s]} for s in spk}
    used = set()
    for c in conn["test"]:
        sup = c.supervisions[0]
        words = sup.text.split()
        assert 3 <= len(words) <= 7 + 2
        assert all(w in DIGIT_WORDS for w in words)
        sources = sup.custom["sources"]
        assert len(sources) == len(words)
        assert set(sources) <= src_ids["test"]
        used |= set(sources)
        # digits' own recordings plus 100-300 ms pauses around each of them
        src = set(sources)
        rec_dur = sum(r.duration for r in spk["test"] if r.recording.id in src)
        assert rec_dur + 0.1 * (len(words) + 1) - 0.01 <= c.duration <= rec_dur + 0.3 * (len(words) + 1) + 0.01
    # test uses (nearly) every test recording exactly once; train uses train recordings only
    assert len(used) >= 500 - 2
    uses = Counter(s for c in conn["train"] for s in c.supervisions[0].custom["sources"])
    assert set(uses) == src_ids["train"]  # every training recording, and only those ...
    # ... in conn_train_passes = 3 contexts (a few leftovers at a speaker's end are dropped)
    assert max(uses.values()) == 3 and sum(uses.values()) >= 0.99 * 3 * len(src_ids["train"])
    a, sr = sf.read(next(iter(conn["dev"])).recording.sources[0].source)
    assert sr == 8000 and abs(a).max() > 0.05


def test_fsdd_deterministic(fsdd_dir, fsdd_prepared, tmp_path):
    out, _ = fsdd_prepared
    prepare_corpus("fsdd", tmp_path, corpus_dir=fsdd_dir)
    a = load_manifest(manifest_path(out, "fsdd_conn", "dev"))
    b = load_manifest(manifest_path(tmp_path, "fsdd_conn", "dev"))
    assert [c.supervisions[0].text for c in a] == [c.supervisions[0].text for c in b]
    wa = sf.read(next(iter(a)).recording.sources[0].source)[0]
    wb = sf.read(next(iter(b)).recording.sources[0].source)[0]
    assert (wa == wb).all()


def test_fsdd_works_from_files_present(fsdd_dir, tmp_path):
    """A speaker named in metadata.py but absent is fine; a subset of files is fine."""
    rec = tmp_path / "corpus" / "recordings"
    rec.mkdir(parents=True)
    for f in sorted((fsdd_dir / "recordings").glob("*.wav")):
        _, spk, take = f.stem.split("_")
        if spk in ("theo", "george") and int(take) < 12:
            shutil.copy(f, rec / f.name)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dev_speakers: []\n")  # dev = takes 0-4 of the training speakers
    tasks = prepare_corpus("fsdd", tmp_path / "out", corpus_dir=tmp_path / "corpus", config=cfg)
    assert _speakers(tasks["fsdd_spk"]["train"]) == {"george"}
    assert _speakers(tasks["fsdd_spk"]["dev"]) == {"george"} and len(tasks["fsdd_spk"]["dev"]) == 50
    with pytest.raises(DataError, match=r"dev_speakers \['jackson'\] have no recordings"):
        prepare_corpus("fsdd", tmp_path / "out1", corpus_dir=tmp_path / "corpus")
    with pytest.raises(DataError, match=r"test_speakers \['lucas'\]"):
        cfg.write_text("test_speakers: [lucas]\n")
        prepare_corpus("fsdd", tmp_path / "out2", corpus_dir=tmp_path / "corpus", config=cfg)
    with pytest.raises(DataError, match=r"\['theo'\] are in both test_speakers and dev_speakers"):
        cfg.write_text("dev_speakers: [theo]\n")
        prepare_corpus("fsdd", tmp_path / "out3", corpus_dir=tmp_path / "corpus", config=cfg)


# ------------------------------------------------------------------------------ bad input


def _yesno_copy(yesno_dir: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in yesno_dir.glob("*.wav"):
        shutil.copy(f, dst / f.name)
    return dst


def test_missing_corpus_dir(tmp_path):
    with pytest.raises(DataError, match=r"corpus directory not found: /no/such/dir"):
        prepare_corpus("yesno", tmp_path, corpus_dir="/no/such/dir")
    with pytest.raises(DataError, match=r"corpus directory not found: .*nothing_here \(fsdd\)"):
        prepare_corpus("fsdd", tmp_path, corpus_dir=tmp_path / "nothing_here")


def test_unknown_corpus(tmp_path):
    with pytest.raises(HfasrError, match=r"unknown corpus 'wsj'"):
        prepare_corpus("wsj", tmp_path)


def test_malformed_config(yesno_dir, tmp_path):
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("test_speaker: theo\n")  # typo: test_speakers
    with pytest.raises(ConfigError, match=r"prep\.yaml.*unknown key 'test_speaker'"):
        prepare_corpus("fsdd", tmp_path / "o", corpus_dir=yesno_dir, config=cfg)


def test_truncated_wav(yesno_dir, tmp_path):
    d = _yesno_copy(yesno_dir, tmp_path / "y")
    victim = d / "0_0_1_0_1_0_1_1.wav"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"0_0_1_0_1_0_1_1\.wav: truncated WAV"):
        prepare_corpus("yesno", tmp_path / "o", corpus_dir=d)


def test_non_audio_wav(fsdd_dir, tmp_path):
    rec = tmp_path / "c" / "recordings"
    rec.mkdir(parents=True)
    for f in sorted((fsdd_dir / "recordings").glob("*_theo_1*.wav"))[:5] + sorted((fsdd_dir / "recordings").glob("*_george_1*.wav"))[:5]:
        shutil.copy(f, rec / f.name)
    (rec / "3_george_40.wav").write_text("this is not audio\n" * 20)
    with pytest.raises(DataError, match=r"3_george_40\.wav: not a WAV file"):
        prepare_corpus("fsdd", tmp_path / "o", corpus_dir=tmp_path / "c")


def test_skip_bad_writes_report(yesno_dir, tmp_path):
    d = _yesno_copy(yesno_dir, tmp_path / "y")
    (d / "0_0_1_0_1_0_1_1.wav").write_bytes((d / "0_0_1_0_1_0_1_1.wav").read_bytes()[:100])
    (d / "1_1_1_1_1_1_1_1.wav").write_text("garbage")
    tasks = prepare_corpus("yesno", tmp_path / "o", corpus_dir=d, skip_bad=True)
    y = tasks["yesno"]
    assert len(y["train"]) + len(y["test"]) == 58
    report = (tmp_path / "o" / "skipped.txt").read_text().splitlines()
    assert len(report) == 2
    assert any("0_0_1_0_1_0_1_1.wav" in r and "truncated" in r for r in report)
    assert any("1_1_1_1_1_1_1_1.wav" in r and "not a WAV" in r for r in report)
    # the split of the remaining files is still lhotse's
    files = sorted(p.stem for p in yesno_dir.glob("*.wav"))
    assert {c.recording.id for c in y["test"]} <= set(files[1::2])


def _fake_librispeech(root: Path, parts=("train-clean-5", "dev-clean-2"), n_spk: int = 2) -> Path:
    ls = root / "LibriSpeech"
    for pi, part in enumerate(parts):
        for spk, ch in [(100 * (k + 1) + pi, 10 * (k + 1)) for k in range(n_spk)]:
            d = ls / part / str(spk) / str(ch)
            lines = []
            for i in range(2):
                uid = f"{spk}-{ch}-{i:04d}"
                write_tone(d / f"{uid}.flac", 0.4 + 0.1 * i, fmt="FLAC", seed=i)
                lines.append(f"{uid} HELLO WORLD NUMBER {('ONE', 'TWO')[i]}")
            (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_fake(tmp_path):
    root = _fake_librispeech(tmp_path / "corpus")
    tasks = prepare_corpus("mini_librispeech", tmp_path / "o", corpus_dir=root)
    t = tasks["librispeech"]
    assert len(t["train"]) == 4 and len(t["dev"]) == 4 and len(t["test"]) == 4
    assert next(iter(t["train"])).supervisions[0].text.startswith("HELLO WORLD")
    assert manifest_path(tmp_path / "o", "librispeech", "train").is_file()


def test_librispeech_held_out_speakers_lexicon_parts(tmp_path):
    """train-clean-5 alone: dev and test are whole held-out training speakers; the lexicon comes
    from a given file, then CMUdict; a training utterance with a word in neither is dropped (or
    an error naming it), an evaluation one keeps it."""
    root = _fake_librispeech(tmp_path / "corpus", parts=("train-clean-5",), n_spk=5)
    trans = root / "LibriSpeech" / "train-clean-5" / "100" / "10" / "100-10.trans.txt"
    trans.write_text("100-10-0000 HELLO ZZYZXQ\n100-10-0001 HELLO WORLD\n")
    trans = root / "LibriSpeech" / "train-clean-5" / "200" / "20" / "200-20.trans.txt"
    trans.write_text("200-20-0000 HELLO QQXQZ\n200-20-0001 HELLO WORLD\n")
    given = tmp_path / "lex.txt"
    given.write_text("HELLO HH AH0 L OW1\nZZYZXQ Z AY1\n")
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"dev_speakers: ['300']\ntest_speakers: ['200']\nlexicon: {given}\n")
    t = prepare_corpus("mini_librispeech", tmp_path / "o", corpus_dir=root, config=cfg)["librispeech"]
    spk = {s: {c.supervisions[0].speaker for c in t[s]} for s in ("train", "dev", "test")}
    assert spk == {"train": {"100", "400", "500"}, "dev": {"300"}, "test": {"200"}}
    lex = (tmp_path / "o" / "librispeech_lexicon.txt").read_text().splitlines()
    assert "HELLO HH AH L OW" in lex and "ZZYZXQ Z AY" in lex  # the given file's, stress stripped
    assert "WORLD W ER L D" in lex and not any(x.startswith("QQXQZ ") for x in lex)  # CMUdict; unknown
    assert "200-20-0000" in {c.id.split("_")[0][:11] for c in t["test"]}  # kept with its OOV
    parts = (tmp_path / "o" / "librispeech_test_parts.txt").read_text().split()
    assert parts[1::2] == ["heldout"] * len(t["test"])
    trans = root / "LibriSpeech" / "train-clean-5" / "400" / "40" / "400-40.trans.txt"
    trans.write_text("400-40-0000 HELLO QQXQZ\n400-40-0001 HELLO WORLD'S\n")
    t = prepare_corpus("mini_librispeech", tmp_path / "o1", corpus_dir=root, config=cfg)["librispeech"]
    assert [c.id[:11] for c in t["train"] if c.id.startswith("400-40-0000")] == ["400-40-0000"]  # kept
    lex = (tmp_path / "o1" / "librispeech_lexicon.txt").read_text().splitlines()
    assert "WORLD'S W ER L D Z" in lex and not any(x.startswith("QQXQZ ") for x in lex)  # possessive rule
    cfg.write_text(cfg.read_text() + "unknown_words: drop\n")
    t = prepare_corpus("mini_librispeech", tmp_path / "o2", corpus_dir=root, config=cfg)["librispeech"]
    assert [c.id for c in t["train"] if c.id.startswith("400-40-0000")] == []
    cfg.write_text(f"dev_speakers: ['300']\ntest_speakers: ['200']\nunknown_words: error\nlexicon: {given}\n")
    with pytest.raises(DataError, match=r"word 'QQXQZ' of training utterance '400-40-0000.*neither"):
        prepare_corpus("mini_librispeech", tmp_path / "o3", corpus_dir=root, config=cfg)
    cfg.write_text("dev_utterances: 3\ntest_utterances: 3\n")
    trans.write_text("400-40-0000 HELLO\n400-40-0001 HELLO WORLD\n")
    t = prepare_corpus("mini_librispeech", tmp_path / "o4", corpus_dir=root, config=cfg)["librispeech"]
    n = {s: len({c.supervisions[0].speaker for c in t[s]}) for s in ("train", "dev", "test")}
    assert n == {"train": 1, "dev": 2, "test": 2}
    # dev = the dev-clean-2 part, test = held-out training speakers; with a test-* part too,
    # the held-out test speakers are unused (the fallback) and the test-* part is the test set
    root2 = _fake_librispeech(tmp_path / "corpus2")
    cfg.write_text("test_speakers: ['200']\n")
    t = prepare_corpus("mini_librispeech", tmp_path / "o5", corpus_dir=root2, config=cfg)["librispeech"]
    assert {c.supervisions[0].speaker for c in t["dev"]} == {"101", "201"}
    assert {c.supervisions[0].speaker for c in t["test"]} == {"200"}
    root3 = _fake_librispeech(tmp_path / "corpus3", parts=("train-clean-100", "dev-clean", "test-clean"))
    t = prepare_corpus("librispeech", tmp_path / "o7", corpus_dir=root3, config=cfg)["librispeech"]
    assert {c.supervisions[0].speaker for c in t["test"]} == {"102", "202"}
    assert {c.supervisions[0].speaker for c in t["train"]} == {"100", "200"}
    # dev held out of train: dev-clean-2 becomes the test set, named per part
    cfg.write_text("dev_speakers: ['100']\n")
    t = prepare_corpus("mini_librispeech", tmp_path / "o6", corpus_dir=root2, config=cfg)["librispeech"]
    assert {c.supervisions[0].speaker for c in t["test"]} == {"101", "201"}
    assert set((tmp_path / "o6" / "librispeech_test_parts.txt").read_text().split()[1::2]) == {"dev-clean-2"}


def test_librispeech_empty_transcript(tmp_path):
    root = _fake_librispeech(tmp_path / "corpus")
    trans = root / "LibriSpeech" / "train-clean-5" / "100" / "10" / "100-10.trans.txt"
    trans.write_text("100-10-0000 HELLO\n100-10-0001\n")
    with pytest.raises(DataError, match=r"empty or missing transcript for utterance '100-10-0001' \(.*100-10\.trans\.txt:2\)"):
        prepare_corpus("librispeech", tmp_path / "o", corpus_dir=root)
    tasks = prepare_corpus("librispeech", tmp_path / "o2", corpus_dir=root, skip_bad=True)
    assert "100-10-0001" not in {c.supervisions[0].id for c in tasks["librispeech"]["train"]}
    assert "100-10-0001" in (tmp_path / "o2" / "skipped.txt").read_text()


def test_librispeech_audio_without_transcript(tmp_path):
    root = _fake_librispeech(tmp_path / "corpus")
    write_tone(root / "LibriSpeech" / "dev-clean-2" / "101" / "10" / "101-10-0009.flac", fmt="FLAC")
    with pytest.raises(DataError, match=r"101-10-0009\.flac: no transcript"):
        prepare_corpus("librispeech", tmp_path / "o", corpus_dir=root)


def _fake_timit(root: Path) -> Path:
    from lhotse.recipes.timit import get_speakers

    dev_spks, test_spks = get_speakers()
    layout = [("TRAIN", "DR1", "FCJF0"), ("TRAIN", "DR2", "MABC0"),
              ("TEST", "DR1", min(dev_spks).upper()), ("TEST", "DR2", min(test_spks).upper())]
    for part, dr, spk in layout:
        d = root / "data" / part / dr / spk
        for i, utt in enumerate(("SA1", "SI100")):
            wav = d / f"{utt}.WAV"
            write_tone(wav, 0.5, fmt="WAV", seed=i)
            n = 8000
            (d / f"{utt}.TXT").write_text(f"0 {n} She had your dark suit.\n")
            (d / f"{utt}.WRD").write_text(f"0 4000 she\n4000 {n} had\n")
            (d / f"{utt}.PHN").write_text(f"0 4000 sh\n4000 {n} iy\n")
    return root


def test_timit_fake(tmp_path):
    root = _fake_timit(tmp_path / "timit")
    tasks = prepare_corpus("timit", tmp_path / "o", corpus_dir=root)
    t = tasks["timit"]
    assert (len(t["train"]), len(t["dev"]), len(t["test"])) == (4, 2, 2)
    assert next(iter(t["test"])).supervisions[0].text == "She had your dark suit."


def test_timit_missing_transcript(tmp_path):
    root = _fake_timit(tmp_path / "timit")
    victim = root / "data" / "TRAIN" / "DR1" / "FCJF0" / "SI100.TXT"
    victim.unlink()
    with pytest.raises(DataError, match=r"SI100\.TXT: transcript missing for utterance 'FCJF0-SI100'"):
        prepare_corpus("timit", tmp_path / "o", corpus_dir=root)
    (root / "data" / "TRAIN" / "DR1" / "FCJF0" / "SI100.TXT").write_text("0 8000 \n")
    with pytest.raises(DataError, match=r"empty or missing transcript for utterance 'FCJF0-SI100'"):
        prepare_corpus("timit", tmp_path / "o", corpus_dir=root)


def test_synth_through_prepare(tmp_path):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("num_train: 3\nnum_dev: 2\nnum_test: 2\n")
    tasks = prepare_corpus("synth", tmp_path / "o", config=cfg)
    s = tasks["synth"]
    assert (len(s["train"]), len(s["dev"]), len(s["test"])) == (3, 2, 2)
    assert not _speakers(s["train"]) & _speakers(s["test"])
    for split in ("train", "dev", "test"):
        assert len(load_manifest(manifest_path(tmp_path / "o", "synth", split))) == len(s[split])


# ------------------------------------------------------------------------------------------- an4

# ../shared/data/an4, as conftest.py locates yesno and fsdd (HFASR_SHARED_DATA overrides)
AN4 = Path(os.environ.get("HFASR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "an4"


@pytest.fixture(scope="module")
def an4_dir() -> Path:
    if not AN4.is_dir():
        pytest.fail(f"test corpus missing: {AN4} (set HFASR_SHARED_DATA to the shared/data folder)")
    return AN4


@pytest.fixture(scope="module")
def an4_prepared(tmp_path_factory, an4_dir):
    out = tmp_path_factory.mktemp("an4")
    return out, prepare_corpus("an4", out, corpus_dir=an4_dir)["an4"]


def test_an4_splits(an4_dir, an4_prepared):
    out, t = an4_prepared
    n = {s: len(t[s]) for s in ("train", "dev", "test")}
    assert n["train"] + n["dev"] == 948 and n["test"] == 130
    assert 100 <= n["dev"] <= 130  # whole speakers until >= dev_utterances (100)
    spk = {s: _speakers(t[s]) for s in t}
    assert len(spk["train"] | spk["dev"]) == 74 and len(spk["test"]) == 10
    assert not spk["dev"] & spk["train"] and not spk["test"] & (spk["train"] | spk["dev"])
    cuts = {c.supervisions[0].id: c for s in t for c in t[s]}
    fash = cuts["an251-fash-b"]
    assert fash.supervisions[0].text == "YES" and fash.supervisions[0].speaker == "fash"
    assert fash.recording.id == "an251-fash-b" and fash.sampling_rate == 16000
    assert cuts["an406-fcaw-b"].supervisions[0].text == "RUBOUT G M E F THREE NINE"
    assert {c.recording.id for c in t["test"]} == {ln.split("/")[-1] for ln in (an4_dir / "etc" / "an4_test.fileids").read_text().split()}
    assert (out / "skipped.txt").read_text() == ""
    lex = (out / "an4_lexicon.txt").read_text().splitlines()
    assert "A AH" in lex and "A EY" in lex  # an4.dic's A and A(2)
    assert not any("(" in ln for ln in lex)
    assert len(load_manifest(manifest_path(out, "an4", "dev"))) == n["dev"]


def _an4_copy(an4_dir: Path, dst: Path, train_speakers: int = 4, per_speaker: int = 3) -> Path:
    """A small AN4 tree: the first utterances of a few train speakers and one test speaker
    (audio symlinked; etc/ lines copied)."""
    (dst / "etc").mkdir(parents=True)
    shutil.copy(an4_dir / "etc" / "an4.dic", dst / "etc" / "an4.dic")
    for part, nspk in (("train", train_speakers), ("test", 1)):
        fids = (an4_dir / "etc" / f"an4_{part}.fileids").read_text().splitlines()
        trans = (an4_dir / "etc" / f"an4_{part}.transcription").read_text().splitlines()
        keep: list[tuple[str, str]] = []
        per: Counter = Counter()
        for f, tr in zip(fids, trans):
            spk = f.split("/")[1]
            if (spk in per or len(per) < nspk) and per[spk] < per_speaker:
                per[spk] += 1
                keep.append((f, tr))
        for f, _ in keep:
            (dst / "wav" / f).parent.mkdir(parents=True, exist_ok=True)
            (dst / "wav" / f"{f}.wav").symlink_to(an4_dir / "wav" / f"{f}.wav")
        (dst / "etc" / f"an4_{part}.fileids").write_text("".join(f + "\n" for f, _ in keep))
        (dst / "etc" / f"an4_{part}.transcription").write_text("".join(tr + "\n" for _, tr in keep))
    return dst


def _edit_line(path: Path, lineno: int, fn) -> str:
    """Replace line ``lineno`` (1-based) of ``path`` by ``fn(line)``; return the old line."""
    lines = path.read_text().splitlines()
    old = lines[lineno - 1]
    lines[lineno - 1] = fn(old)
    path.write_text("".join(ln + "\n" for ln in lines if ln is not None))
    return old


def test_an4_dev_speakers_config(an4_dir, tmp_path):
    d = _an4_copy(an4_dir, tmp_path / "an4")
    train_spk = sorted({f.split("/")[1] for f in (d / "etc" / "an4_train.fileids").read_text().split()})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"dev_speakers: [{train_spk[2]}]\n")
    t = prepare_corpus("an4", tmp_path / "o", corpus_dir=d, config=cfg)["an4"]
    assert _speakers(t["dev"]) == {train_spk[2]} and len(t["train"]) == 9 and len(t["test"]) == 3
    cfg.write_text("dev_utterances: 4\n")  # two whole speakers (3 utterances each)
    t2 = prepare_corpus("an4", tmp_path / "o2", corpus_dir=d, config=cfg)["an4"]
    assert len(_speakers(t2["dev"])) == 2 and len(t2["dev"]) == 6
    assert _speakers(prepare_corpus("an4", tmp_path / "o3", corpus_dir=d, config=cfg)["an4"]["dev"]) == _speakers(t2["dev"])
    cfg.write_text("dev_speakers: [nobody]\n")
    with pytest.raises(DataError, match=r"dev_speakers \['nobody'\] are not training speakers"):
        prepare_corpus("an4", tmp_path / "o4", corpus_dir=d, config=cfg)


def test_an4_bad_input_names_utterance(an4_dir, tmp_path):
    d = _an4_copy(an4_dir, tmp_path / "an4")
    fids, trans = d / "etc" / "an4_train.fileids", d / "etc" / "an4_train.transcription"
    victim = fids.read_text().splitlines()[1]
    utt = victim.split("/")[-1]
    wav = d / "wav" / f"{victim}.wav"
    wav.unlink()
    with pytest.raises(DataError, match=rf"{utt}\.wav: audio file not found for utterance '{utt}' \(.*an4_train\.fileids:2"):
        prepare_corpus("an4", tmp_path / "o", corpus_dir=d)
    wav.symlink_to(an4_dir / "wav" / f"{victim}.wav")
    old = _edit_line(trans, 3, lambda ln: ln.replace("(", "(x"))
    with pytest.raises(DataError, match=r"an4_train\.transcription:3: transcript of utterance 'x.*' does not match fileid"):
        prepare_corpus("an4", tmp_path / "o", corpus_dir=d)
    _edit_line(trans, 3, lambda ln: old)
    _edit_line(trans, 2, lambda ln: ln.replace("</s>", "ZORK </s>"))
    with pytest.raises(DataError, match=rf"word 'ZORK' of utterance '{utt}' .*not in .*an4\.dic"):
        prepare_corpus("an4", tmp_path / "o", corpus_dir=d)
    _edit_line(trans, 2, lambda ln: f"<s> </s> ({utt})")
    with pytest.raises(DataError, match=rf"empty or missing transcript for utterance '{utt}'"):
        prepare_corpus("an4", tmp_path / "o", corpus_dir=d)
    _edit_line(trans, 2, lambda ln: None)  # one line fewer: every later line is out of step
    with pytest.raises(DataError, match=r"does not match fileid.*\(12 fileids, 11 transcripts\)"):
        prepare_corpus("an4", tmp_path / "o", corpus_dir=d)


def test_an4_skip_bad(an4_dir, tmp_path):
    d = _an4_copy(an4_dir, tmp_path / "an4")
    fids, trans = d / "etc" / "an4_train.fileids", d / "etc" / "an4_train.transcription"
    ids = [f.split("/")[-1] for f in fids.read_text().split()]
    (d / "wav" / f"{fids.read_text().split()[0]}.wav").unlink()
    _edit_line(trans, 5, lambda ln: ln.replace("(", "(x"))
    _edit_line(trans, 7, lambda ln: ln.replace("</s>", "ZORK </s>"))
    t = prepare_corpus("an4", tmp_path / "o", corpus_dir=d, skip_bad=True)["an4"]
    kept = {c.recording.id for s in t for c in t[s]}
    bad = {ids[0], ids[4], ids[6]}
    assert not kept & bad and len(kept) == 15 - 3
    report = (tmp_path / "o" / "skipped.txt").read_text().splitlines()
    assert sorted(r.split("\t")[0] for r in report) == sorted(bad)
    assert any("audio file not found" in r for r in report) and any("ZORK" in r for r in report)


def test_an4_sphere_audio(an4_dir, tmp_path):
    """The SphinxTrain archive's .sph files: decoded with libsndfile, stored as WAV."""
    d = _an4_copy(an4_dir, tmp_path / "an4", train_speakers=2, per_speaker=2)
    for w in list((d / "wav").rglob("*.wav")):
        a, sr = sf.read(str(w), dtype="int16")
        w.unlink()
        sf.write(str(w.with_suffix(".sph")), a, sr, format="NIST", subtype="PCM_16")
    t = prepare_corpus("an4", tmp_path / "o", corpus_dir=d, config=None)["an4"]
    c = next(iter(t["test"]))
    src = Path(c.recording.sources[0].source)
    assert src.suffix == ".wav" and src.is_relative_to(tmp_path / "o" / "an4_wav")
    ref = sf.read(str(an4_dir / "wav" / src.relative_to(tmp_path / "o" / "an4_wav")), dtype="int16")[0]
    assert (c.load_audio()[0] * 32768).round().astype(np.int16).tolist() == ref.tolist()
