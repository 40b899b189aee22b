"""Frame data streamed from disk (hfasr/data/stream.py) against the in-memory FrameData."""

from __future__ import annotations

import pytest
import torch
from toy_frames import SMALL, TASK, Killed, kill_at_batch, params_of

from hfasr.config import load_config
from hfasr.data.frames import FrameData
from hfasr.data.stream import StreamedFrameData
from hfasr.data.utterances import FrameRows
from hfasr.errors import ConfigError
from hfasr.train import TrainConfig, run_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("utt_cmn", [False, True])
def test_streamed_rows_equal_in_memory(corpus, utt_cmn):
    root, _ = corpus
    mem = FrameData.load(root, TASK, "train", root / "gmm")
    if utt_cmn:
        mem.apply_utterance_cmn()
    st = StreamedFrameData.load(root, TASK, "train", root / "gmm", utt_cmn=utt_cmn, buffer_utts=3)
    assert st.cut_ids == mem.cut_ids and torch.equal(st.offsets, mem.offsets)
    assert torch.equal(st.targets.long(), mem.targets) and st.targets.dtype == torch.int32
    assert torch.equal(st.pdf_counts(), mem.pdf_counts())
    assert torch.allclose(st.mean, mem.feats.mean(0), atol=1e-5)
    assert torch.allclose(st.std, mem.feats.std(0), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, mem.num_frames, (300,), generator=g)
    for c in (0, 2):
        assert torch.allclose(st.spliced(idx, c), mem.spliced(idx, c))
    a, b = FrameRows(st, 2).batch(idx), FrameRows(mem, 2).batch(idx)
    assert torch.allclose(a.inputs[0], b.inputs[0]) and torch.equal(a.target, b.target) and a.target.dtype == torch.long


def test_block_shuffle_is_a_permutation_and_bounded(corpus):
    root, _ = corpus
    st = StreamedFrameData.load(root, TASK, "train", root / "gmm", buffer_utts=3)
    order = st.shuffled_frames(torch.Generator().manual_seed(1))
    assert torch.equal(order.sort().values, torch.arange(st.num_frames))
    utt = torch.searchsorted(st.offsets, order, right=True) - 1
    lens = st.lengths
    pos = 0
    while pos < order.numel():
        seen, n = [], 0
        for u in utt[pos:].tolist():
            if u not in seen:
                if len(seen) == 3:
                    break
                seen.append(u)
            n += 1
        assert n == int(lens[seen].sum())  # whole utterances, at most 3 per block
        pos += n
    # a training epoch reads each utterance about once and never holds more than cache_utts
    rows = FrameRows(st, 2)
    st.loads = 0
    for batch in rows.shuffled(torch.Generator().manual_seed(2), 16):
        rows.batch(batch)
        assert len(st._cache) <= st.cache_utts
    assert len(st) <= st.loads <= 2 * len(st)
    assert not torch.equal(st.shuffled_frames(torch.Generator().manual_seed(3)), order)


def test_streamed_training_learns_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    d = {**SMALL, "optimizer": "adam", "lr": 0.01, "epochs": 3, "lr_schedule": "constant", "stream_buffer_utts": 4}
    cfg = load_config(TrainConfig, None, d)
    ref = run_training(cfg, root, TASK, root / "gmm", tmp_path / "a", progress=False)
    assert isinstance(ref.task.train, StreamedFrameData)
    assert ref.final_record()["dev_acc"] > 0.8

    undo = kill_at_batch(monkeypatch, FrameRows, cfg.batch_size, epoch=2, batch=3)
    with pytest.raises(Killed):
        run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", progress=False)
    undo()
    res = run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.task.net), params_of(res.task.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa = torch.load(tmp_path / "a" / "prior.pt", weights_only=True)
    mem = run_training(load_config(TrainConfig, None, {**d, "stream_buffer_utts": 0}), root, TASK, root / "gmm",
                       tmp_path / "m", progress=False)
    pm = torch.load(tmp_path / "m" / "prior.pt", weights_only=True)
    assert torch.equal(pa["log_prior"] if isinstance(pa, dict) else pa, pm["log_prior"] if isinstance(pm, dict) else pm)
    assert mem.final_record()["dev_acc"] > 0.8


def test_stream_config_errors():
    with pytest.raises(ConfigError, match="stream_buffer_utts"):
        load_config(TrainConfig, None, {"optimizer": "hf", "stream_buffer_utts": 10})
    with pytest.raises(ConfigError, match="stream_buffer_utts"):
        load_config(TrainConfig, None, {"optimizer": "adam", "model": "blstm", "stream_buffer_utts": 10})
    with pytest.raises(ConfigError, match="stream_buffer_utts"):
        load_config(TrainConfig, None, {"optimizer": "adam", "stream_buffer_utts": -1})


def test_feature_ref_reads_as_the_cut_and_lazy_manifest_errors(corpus, tmp_path):
    """A FeatureRef (what streamed sets keep per utterance) reads the cut's features exactly, the
    cuts of one archive share one Features template; a truncated manifest met by the lazy
    streamed loader is a DataError naming the file."""
    import shutil

    import numpy as np

    from hfasr.data.corpora import load_cuts
    from hfasr.data.features import FeatureRef, cut_features
    from hfasr.data.frames import feats_manifest_path
    from hfasr.errors import DataError

    root, _ = corpus
    manifest = feats_manifest_path(root, TASK, "train")
    cuts = list(load_cuts(manifest))
    refs = [FeatureRef(c) for c in cuts]
    for c, r in zip(cuts, refs):
        assert r.id == c.id and np.array_equal(cut_features(r, manifest), cut_features(c, manifest))
    same = {}
    for c, r in zip(cuts, refs):
        same.setdefault(c.features.storage_path, set()).add(id(r.archive))
    assert all(len(v) == 1 for v in same.values())

    bad = tmp_path / "data"
    shutil.copytree(root, bad, symlinks=True)
    gz = feats_manifest_path(bad, TASK, "train").read_bytes()
    feats_manifest_path(bad, TASK, "train").write_bytes(gz[: len(gz) // 2])  # a truncated gzip stream
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        StreamedFrameData.load(bad, TASK, "train", root / "gmm")
    assert str(feats_manifest_path(bad, TASK, "train")) in str(e.value)
