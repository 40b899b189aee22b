"""Frequency warping / masking of spliced training rows (hfasr/data/augment.py)."""

from __future__ import annotations

import pytest
import torch
from toy_frames import SMALL, TASK, F, Killed, kill_at_batch, params_of

from hfasr.config import load_config
from hfasr.data.augment import AugmentConfig, AugmentedRows, augment_rows, mask_bins, warp_bins
from hfasr.data.frames import FrameData
from hfasr.data.utterances import FrameRows
from hfasr.errors import ConfigError
from hfasr.train import TrainConfig, run_training

pytestmark = pytest.mark.usefixtures("one_thread")


def test_warp_identity_and_stretch():
    x = torch.randn(3, 4, 10)
    assert torch.equal(warp_bins(x, torch.ones(3)), x)
    ramp = torch.arange(10.0).expand(2, 1, 10).clone()
    y = warp_bins(ramp, torch.tensor([2.0, 0.5]))
    # factor 2: output bin j reads input position j / 2 (linear interpolation)
    assert torch.allclose(y[0, 0], torch.arange(10.0) / 2)
    # factor 0.5: bin j reads 2j, clamped to the last bin
    assert torch.allclose(y[1, 0], torch.arange(10.0).mul(2).clamp(max=9))


def test_mask_bins_width_and_fill():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, 20)
    fill = torch.full((20,), 7.0)
    y = mask_bins(x, fill, masks=1, width=5, generator=g)
    masked = (y == 7.0).all(1)  # (N, F): a band covers every frame of the row
    widths = masked.sum(1)
    assert widths.max() <= 5 and widths.min() == 0 and (widths == 5).any()
    # the masked bins of a row are one contiguous band; the rest is unchanged
    for row, m in zip(range(500), masked):
        idx = m.nonzero().flatten()
        if idx.numel():
            assert int(idx[-1] - idx[0]) + 1 == idx.numel()
        assert torch.equal(y[row][:, ~m], x[row][:, ~m])
    assert torch.equal(mask_bins(x, fill, 0, 5, g), x)


def test_augment_rows_prob_and_inactive():
    x = torch.randn(50, 3 * 8)
    g = torch.Generator().manual_seed(1)
    assert augment_rows(x, 8, AugmentConfig(), torch.zeros(8), g) is x
    y = augment_rows(x, 8, AugmentConfig(freq_masks=2, freq_width=3, prob=0.0), torch.zeros(8), g)
    assert torch.equal(y, x)
    y = augment_rows(x, 8, AugmentConfig(freq_masks=2, freq_width=3, warp=0.2), torch.zeros(8), g)
    assert y.shape == x.shape and not torch.equal(y, x) and torch.isfinite(y).all()


def test_augmented_rows_seeded_by_indices():
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(20, 6, generator=g) for _ in range(3)]
    data = FrameData(["a", "b", "c"], feats, [torch.zeros(20, dtype=torch.long)] * 3, 2)
    cfg = AugmentConfig(freq_masks=2, freq_width=3)
    rows = AugmentedRows(data, 1, cfg, torch.zeros(6), seed=0)
    plain = FrameRows(data, 1)
    idx = torch.tensor([5, 30, 41, 2])
    a, b = rows.batch(idx), rows.batch(idx.clone())
    assert torch.equal(a.inputs[0], b.inputs[0])  # same minibatch, same draws (resume)
    assert torch.equal(a.target, plain.batch(idx).target)
    assert not torch.equal(a.inputs[0], plain.batch(idx).inputs[0])
    assert not torch.equal(rows.batch(torch.tensor([6, 30, 41, 2])).inputs[0][1:], a.inputs[0][1:])
    other = AugmentedRows(data, 1, cfg, torch.zeros(6), seed=1)
    assert not torch.equal(other.batch(idx).inputs[0], a.inputs[0])


def test_config_errors():
    with pytest.raises(ConfigError, match="warp"):
        load_config(TrainConfig, None, {"optimizer": "adam", "augment": {"warp": 0.7}})
    with pytest.raises(ConfigError, match="Hessian-free"):
        load_config(TrainConfig, None, {"optimizer": "hf", "augment": {"freq_masks": 2, "freq_width": 4}})
    with pytest.raises(ConfigError, match="model 'blstm'"):
        load_config(TrainConfig, None, {"optimizer": "adam", "model": "blstm", "augment": {"warp": 0.1}})
    # masks of width 0 are inactive, so HF accepts them
    load_config(TrainConfig, None, {"optimizer": "hf", "augment": {"freq_masks": 2, "freq_width": 0}})


def test_training_with_augmentation_learns_and_resumes_exactly(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    d = {**SMALL, "optimizer": "adam", "lr": 0.01, "epochs": 3, "lr_schedule": "constant",
         "augment": {"freq_masks": 1, "freq_width": max(1, F // 4)}}
    cfg = load_config(TrainConfig, None, d)
    ref = run_training(cfg, root, TASK, root / "gmm", tmp_path / "a", progress=False)
    assert isinstance(ref.task.train_data, AugmentedRows)
    assert ref.final_record()["dev_acc"] > 0.8
    plain = run_training(load_config(TrainConfig, None, {**d, "augment": {}}), root, TASK, root / "gmm",
                         tmp_path / "p", progress=False)
    a, p = params_of(ref.task.net), params_of(plain.task.net)
    assert any(not torch.equal(a[k], p[k]) for k in a)  # the perturbations reached the training

    undo = kill_at_batch(monkeypatch, AugmentedRows, cfg.batch_size, epoch=2, batch=3)
    with pytest.raises(Killed):
        run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", progress=False)
    undo()
    res = run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    b = params_of(res.task.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
