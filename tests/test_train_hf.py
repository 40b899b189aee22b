"""HF-CE training through ``hfasr train --optimizer hf`` (same configs, checkpoints and reports)."""

from __future__ import annotations

import pytest
import torch
import yaml
from toy_frames import SMALL, TASK, params_of

from hfasr.cli import main
from hfasr.config import load_config
from hfasr.train import TrainConfig, run_training

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; `corpus`: conftest.py

HF = {"hf": {"updates_per_report": 2, "curvature_fraction": 0.2, "curvature_min": 128,
            "optimizer": {"cg_max_iters": 30, "damping": 0.1}}}


def test_hf_cli_trains_and_logs(corpus, tmp_path, capsys):
    root, _ = corpus
    cfg = tmp_path / "hf.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, **HF}))
    out = tmp_path / "exp"
    rc = main(["train", "--optimizer", "hf", "--data-dir", str(root), "--task", TASK, "--ali-dir", str(root / "gmm"),
               "--out", str(out), "--config", str(cfg), "--updates", "8"])
    assert rc == 0
    text = capsys.readouterr().out
    assert text.count("hf-update") == 8  # 8 updates, one grep-able line each (not one per logger)
    assert text.count("report hf-ce-dnn") == 5  # the initial model, then every 2 updates
    ckpt = torch.load(out / "final.pt", weights_only=True)
    assert ckpt["dev_acc"] > 0.9 and ckpt["update"] == 8
    state = torch.load(out / "checkpoint.pt", weights_only=True)["driver"]["optimizer"]
    assert state["updates"] == 8 and state["prev_direction"] is not None
    assert load_config(TrainConfig, out / "config.yaml").hf.optimizer.cg_max_iters == 30


@pytest.mark.parametrize("extra", [{}, {"hf": {**HF["hf"], "num_subsets": 2, "heldout_fraction": 0.2,
                                              "optimizer": {"cg_max_iters": 30, "damping": 0.1, "gradient_reuse": "dynamic",
                                                            "rho_data": "heldout", "backtrack_data": "heldout",
                                                            "linesearch_data": "heldout"}}}])
def test_hf_resume_is_exact(corpus, tmp_path, extra):
    root, _ = corpus
    hf = {**HF["hf"], **extra.get("hf", {})}
    cfg = load_config(TrainConfig, None, {**SMALL, "hf": {**hf, "updates": 8}, "optimizer": "hf"})
    ref = run_training(cfg, root, TASK, root / "gmm", tmp_path / "a", progress=False)
    part = load_config(TrainConfig, None, {**SMALL, "hf": {**hf, "updates": 4}, "optimizer": "hf"})
    run_training(part, root, TASK, root / "gmm", tmp_path / "b", progress=False)
    (tmp_path / "b" / "final.pt").unlink()
    res = run_training(cfg, root, TASK, root / "gmm", tmp_path / "b", resume=True, progress=False)
    a, b = params_of(ref.task.net), params_of(res.task.net)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_s"} for r in h]
    assert strip(ref.history) == strip(res.history) and ref.history[-1]["update"] == 8
