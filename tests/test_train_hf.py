"""HF-CE training through ``hfasr train --optimizer hf`` (same configs, checkpoints and reports)."""

from __future__ import annotations

import pytest
import torch
import yaml

from hfasr.cli import main
from hfasr.config import load_config
from hfasr.train import TrainConfig, run_training
from test_train_ce import SMALL, TASK, corpus, one_thread, params_of  # noqa: F401  (fixtures)

HF = {"lr_schedule": "constant", "hf": {"updates_per_epoch": 2, "curvature_fraction": 0.2, "curvature_min_frames": 128,
                                         "optimizer": {"cg_max_iters": 30, "damping": 0.1}}}


def test_hf_cli_trains_and_logs(corpus, tmp_path, capsys):
    root, _ = corpus
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, **HF}))
    out = tmp_path / "exp"
    rc = main(["train", "--optimizer", "hf", "--data-dir", str(root), "--task", TASK, "--ali-dir", str(root / "gmm"),
               "--out", str(out), "--config", str(cfg), "--epochs", "4"])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.count("hf-update") == 8  # 2 updates x 4 epochs, one grep-able line each
    ckpt = torch.load(out / "final.pt", weights_only=True)
    assert ckpt["dev_acc"] > 0.9
    state = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]
    assert state["updates"] == 8 and state["prev_direction"] is not None
    assert load_config(TrainConfig, out / "config.yaml").hf.optimizer.cg_max_iters == 30


@pytest.mark.parametrize("extra", [{}, {"hf": {**HF["hf"], "num_subsets": 2, "heldout_fraction": 0.2,
                                              "optimizer": {"cg_max_iters": 30, "damping": 0.1, "gradient_reuse": "dynamic",
                                                            "rho_data": "heldout", "backtrack_data": "heldout",
                                                            "linesearch_data": "heldout"}}}])
def test_hf_resume_is_exact(corpus, tmp_path, extra):
    root, _ = corpus
    cfg = load_config(TrainConfig, None, {**SMALL, **HF, **extra, "optimizer": "hf", "epochs": 4})
    ref = run_training(cfg, root, TASK, root / "gmm", tmp_path / "a", progress=False)
    part = load_config(TrainConfig, None, {**SMALL, **HF, **extra, "optimizer": "hf", "epochs": 2})
    run_training(part, root, TASK, root / "gmm", tmp_path / "b", progress=False)
    (tmp_path / "b" / "final.pt").unlink()
    res = run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.model), params_of(res.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
