"""``hfasr train --tensorboard DIR`` (hfasr/train/experiment.py): the history's numeric fields as
TensorBoard scalars (step = update, walltime = start + wall_s), a resumed run appending without
duplicate steps, and the clean error when the optional ``tensorboard`` package is missing."""

from __future__ import annotations

import json
import math
import sys

import pytest
from toy_tasks import TASKS, toy_config

from hfasr.errors import ConfigError


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def _scalars(tb_dir) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def _train(kind, cfg, out, tb, resume=False, max_wall=None, finish=True):
    from hfasr.train.experiment import Experiment

    exp = Experiment(cfg, out, resume=resume, progress=False, tensorboard_dir=tb)
    task = TASKS[kind](exp)
    exp.run(task, max_wall=max_wall)
    if finish:
        exp.save_final(task)
    exp.close()  # idempotent (save_final closed it)
    return exp


def _check_matches_history(tb_dir, history):
    """Every numeric field of every record is the scalar of its tag at the record's update, once;
    walltime - wall_s is the same for every point (the run's start)."""
    from hfasr.train.experiment import TB_TAGS

    scalars = _scalars(tb_dir)
    expected_tags = {TB_TAGS[k] for rec in history for k, v in rec.items()
                     if k in TB_TAGS and isinstance(v, (int, float))}
    assert set(scalars) == expected_tags
    starts = []
    for key, tag in TB_TAGS.items():
        want = {rec["update"]: float(rec[key]) for rec in history if isinstance(rec.get(key), (int, float))}
        got = scalars.get(tag, [])
        steps = [ev.step for ev in got]
        assert len(steps) == len(set(steps)), f"{tag}: duplicate steps {steps}"
        assert steps == sorted(want), tag
        for ev in got:
            w = want[ev.step]
            assert (math.isnan(ev.value) and math.isnan(w)) or ev.value == pytest.approx(w, rel=1e-6, abs=1e-7), \
                (tag, ev.step, ev.value, w)
        walls = {rec["update"]: rec["wall_s"] for rec in history}
        starts += [ev.wall_time - walls[ev.step] for ev in got]
    assert max(starts) - min(starts) < 1e-3


@pytest.mark.parametrize("kind,optimizer", [("frame", "hf"), ("frame", "sgd"), ("ctc", "hf")])
def test_scalars_equal_the_history(tmp_path, kind, optimizer):
    pytest.importorskip("tensorboard")
    out, tb = tmp_path / "run", tmp_path / "tb"
    _train(kind, toy_config(kind, optimizer), out, tb)
    history = _history(out)
    assert len(history) >= 3
    _check_matches_history(tb, history)
    tags = set(_scalars(tb))
    assert {"dev/obj", "train/wall_s"} <= tags
    if optimizer == "hf":
        assert {"hf/damping", "hf/cg_iters", "hf/gv_products", "heldout/obj"} <= tags
    else:
        assert {"train/lr", "train/epoch", "train/obj"} <= tags


def test_resume_appends_without_duplicate_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    out, tb = tmp_path / "run", tmp_path / "tb"
    cfg = toy_config("frame", "hf")
    first = _train("frame", cfg, out, tb, max_wall=1e-9, finish=False)  # stops after HF update 1
    assert [h["update"] for h in first.history] == [0, 1]
    # a killed run's report after its last checkpoint: TensorBoard must drop it on resume
    with SummaryWriter(str(tb)) as w:
        w.add_scalar("dev/obj", 999.0, global_step=2)
    _train("frame", cfg, out, tb, resume=True)
    history = _history(out)
    assert [h["update"] for h in history] == [0, 1, 2]
    _check_matches_history(tb, history)  # once per step, 999 gone, one start time across the two runs
    assert len(list(tb.glob("events.out.tfevents.*"))) == 3


def test_tensorboard_given_only_on_resume_gets_the_whole_history(tmp_path):
    pytest.importorskip("tensorboard")
    out, tb = tmp_path / "run", tmp_path / "tb"
    cfg = toy_config("frame", "hf")
    _train("frame", cfg, out, None, max_wall=1e-9, finish=False)
    assert not tb.exists()
    _train("frame", cfg, out, tb, resume=True)
    _check_matches_history(tb, _history(out))


def test_run_experiment_logs_inside_tensorboard_logging(tmp_path):
    """The ``hfasr train`` path: the dir reaches run_experiment without being in the config."""
    pytest.importorskip("tensorboard")
    from hfasr.train.experiment import run_experiment, tensorboard_logging

    out, tb = tmp_path / "run", tmp_path / "tb"
    with tensorboard_logging(tb):
        run_experiment(toy_config("frame"), TASKS["frame"], out, progress=False)
    assert "tensorboard" not in (out / "config.yaml").read_text()
    _check_matches_history(tb, _history(out))
    run_experiment(toy_config("frame"), TASKS["frame"], tmp_path / "plain", progress=False)  # outside: none
    assert not (tmp_path / "plain" / "tb").exists() and len(list(tb.iterdir())) == 1


def test_missing_package_is_a_clean_error(tmp_path, monkeypatch, capsys):
    from hfasr.cli import main
    from hfasr.train.experiment import Experiment

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'hfasr\[tensorboard\]'"):
        Experiment(toy_config("frame"), tmp_path / "run", progress=False, tensorboard_dir=tmp_path / "tb")
    out = tmp_path / "cli"
    rc = main(["train", "--criterion", "ctc", "--data-dir", str(tmp_path / "nodata"), "--task", "t", "--out",
               str(out), "--tensorboard", str(tmp_path / "tb")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tensorboard needs the tensorboard package") and "hfasr[tensorboard]" in err
    assert not out.exists() and not (tmp_path / "tb").exists()  # checked before anything is written
