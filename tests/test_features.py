"""Fbank extraction, lilcom storage, CMVN stats, speed perturbation, and the CLI stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lhotse import load_manifest

from hfasr.cli import main
from hfasr.data.corpora import manifest_path, prepare_corpus
from hfasr.data.features import FeatureConfig, compute_features, load_stats
from hfasr.errors import DataError


@pytest.fixture(scope="module")
def yesno_feats(tmp_path_factory, yesno_dir):
    out = tmp_path_factory.mktemp("yesno")
    prepare_corpus("yesno", out, corpus_dir=yesno_dir)
    return out, compute_features(out, "yesno", FeatureConfig(num_mel_bins=23, speed_perturb=True, num_jobs=1), progress=False)


def test_features_shapes_and_storage(yesno_feats):
    out, feats = yesno_feats
    assert len(feats["train"]) == 90  # 30 cuts x speeds 0.9 / 1.0 / 1.1
    assert len(feats["test"]) == 30
    ids = {c.id for c in feats["train"]}
    assert any(i.endswith("_sp0.9") for i in ids) and any(i.endswith("_sp1.1") for i in ids)
    reloaded = load_manifest(manifest_path(out, "yesno", "test", "feats"))
    c = next(iter(reloaded))
    x = c.load_features()
    assert x.shape == (c.num_frames, 23)
    assert c.num_frames == pytest.approx(c.duration * 100, abs=2)
    assert c.features.storage_type == "lilcom_chunky"
    # speed perturbation changes the duration by the factor
    base = next(cc for cc in feats["train"] if not cc.id.endswith(("_sp0.9", "_sp1.1")))
    fast = next(cc for cc in feats["train"] if cc.id == base.id + "_sp1.1")
    assert fast.duration == pytest.approx(base.duration / 1.1, abs=0.01)


def test_global_stats(yesno_feats):
    out, feats = yesno_feats
    mean, std = load_stats(out / "yesno_stats.pt")
    allx = np.concatenate([c.load_features() for c in feats["train"]])
    assert torch.allclose(mean, torch.from_numpy(allx.mean(0)).float(), atol=1e-3)
    assert torch.allclose(std, torch.from_numpy(allx.std(0)).float(), atol=1e-3)


def test_features_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=r"nope_cuts_train\.jsonl\.gz: manifest not found"):
        compute_features(tmp_path, "nope", FeatureConfig())


def test_cli_prepare_features_info(yesno_dir, tmp_path, capsys):
    assert main(["prepare", "yesno", "--corpus-dir", str(yesno_dir), "--out", str(tmp_path)]) == 0
    assert "yesno        train      30 utts" in capsys.readouterr().out
    cfg = tmp_path / "fbank.yaml"
    cfg.write_text("num_mel_bins: 13\n")
    assert main(["features", str(tmp_path), "--task", "yesno", "--config", str(cfg), "--quiet"]) == 0
    assert load_manifest(manifest_path(tmp_path, "yesno", "dev", "feats"))[0].num_features == 13
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kaldifst 1.7.17" in out and "yesno        test       30" in out


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["prepare", "nocorpus", "--out", str(tmp_path)]) == 2
    assert "unknown corpus 'nocorpus'" in capsys.readouterr().err
    bad = tmp_path / "f.yaml"
    bad.write_text("num_mel_bin: 13\n")
    assert main(["features", str(tmp_path), "--task", "yesno", "--config", str(bad)]) == 2
    assert "f.yaml: unknown key 'num_mel_bin'" in capsys.readouterr().err


def test_speaker_cmvn(yesno_feats, tmp_path):
    """cmvn: speaker stores features with zero mean / unit variance per speaker (a speed copy is
    its own speaker); frame counts and ids are unchanged."""
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    from hfasr.data.features import cmvn_speaker, speaker_cmvn

    _, feats = yesno_feats
    assert cmvn_speaker(next(iter(feats["test"]))) == next(iter(feats["test"])).id  # no speaker: the cut
    cuts = CutSet.from_cuts(fastcopy(c, supervisions=[fastcopy(s, speaker="S") for s in c.supervisions])
                            for c in feats["train"])
    norm = speaker_cmvn(cuts, tmp_path / "spk")
    assert [c.id for c in norm] == [c.id for c in cuts]
    groups: dict[str, list] = {}
    for c in norm:
        groups.setdefault(cmvn_speaker(c), []).append(c.load_features())
    assert len(groups) == 3  # one speaker x speeds 0.9 / 1.0 / 1.1
    for xs in groups.values():
        x = np.concatenate(xs)
        np.testing.assert_allclose(x.mean(0), 0.0, atol=2e-2)
        np.testing.assert_allclose(x.std(0), 1.0, atol=2e-2)
    c0, n0 = next(iter(cuts)), next(iter(norm))
    assert n0.load_features().shape == c0.load_features().shape
    # the transform is the per-speaker affine one (lilcom's precision)
    base = [c for c in cuts if cmvn_speaker(c) == cmvn_speaker(c0)]
    x = np.concatenate([c.load_features() for c in base]).astype(np.float64)
    np.testing.assert_allclose(n0.load_features(), (c0.load_features() - x.mean(0)) / x.std(0), atol=3e-2)


def test_speaker_cmvn_config_error(yesno_feats):
    out, _ = yesno_feats
    with pytest.raises(DataError, match="cmvn: expected none or speaker"):
        compute_features(out, "yesno", FeatureConfig(num_mel_bins=23, cmvn="utt"), progress=False)
