"""SIGKILL + ``--resume`` of every trainer of ``hfasr train`` (bench/faults.py, issue 15 item 6).

The fast case checks the benchmark's own verdicts (a difference in one weight bit, one history
value or one stray temporary file is caught; wall time is not compared) and its kill plans
(seeded, every kind). The slow ones check the in-process kill of a write and run real trials:
the tiny yesno data of the benchmark is built once, then for each trainer a reference run and
two random kill/resume trials whose final model and history must be bit-identical, with no
traceback, no failed run and no file left behind.
"""

from __future__ import annotations

import importlib.util
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_faults", ROOT / "bench" / "faults.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


faults = _load_bench()


def _write_run(out: Path, weight: torch.Tensor, records: list[dict], extra: tuple[str, ...] = ()) -> None:
    out.mkdir(parents=True)
    torch.save({"model_config": {"arch": "dnn"}, "state_dict": {"w": weight}, "update": 2}, out / "final.pt")
    (out / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / faults.LOCK_NAME).write_text("")
    for name in extra:
        (out / name).write_bytes(b"x")


def test_verdicts_and_kill_plans(tmp_path):
    """The one fast case: the comparison catches one bit, one value, one stray file; the kill
    plans are seeded and of every kind."""
    w = torch.tensor([0.5, -1.25, 3.0])
    hist = [{"update": 0, "dev_obj": 1.5, "wall_s": 0.0}, {"update": 1, "dev_obj": 1.25, "wall_s": 2.0}]
    _write_run(tmp_path / "ref", w, hist)
    ref = faults.Outcome.of(tmp_path / "ref")
    assert ref.files == {"final.pt", "history.jsonl"}  # the lock file is not an output
    # the same model and history, another wall time and another lock holder: identical
    _write_run(tmp_path / "same", w.clone(), [{**h, "wall_s": h["wall_s"] + 7} for h in hist])
    same = faults.Outcome.of(tmp_path / "same")
    assert faults.compare(ref, same) == [] and faults.file_problems(ref, same) == []
    # one bit of one weight, one history value, a temporary file of a killed write
    flipped = w.clone()
    flipped.view(torch.int32)[1] ^= 1
    _write_run(tmp_path / "bad", flipped, [hist[0], {**hist[1], "dev_obj": 1.2500001}],
               extra=("checkpoint.pt.tmp.4242.0",))
    bad = faults.Outcome.of(tmp_path / "bad")
    diffs = faults.compare(ref, bad)
    assert any(d.startswith("final.pt.state_dict.w: 1/3 elements differ") for d in diffs), diffs
    assert any(d.startswith("history.jsonl[1].dev_obj: 1.25 vs 1.2500001") for d in diffs), diffs
    assert faults.file_problems(ref, bad) == ["stray file checkpoint.pt.tmp.4242.0"]
    assert faults.temp_files(tmp_path / "bad") == ["checkpoint.pt.tmp.4242.0"]
    # a missing final.pt / a shorter history; NaN equals NaN bit for bit, -0.0 is not 0.0
    (tmp_path / "bad/final.pt").unlink()
    assert "no final.pt" in faults.compare(ref, faults.Outcome.of(tmp_path / "bad"))
    assert faults.diff_values(torch.tensor([float("nan")]), torch.tensor([float("nan")])) == []
    assert faults.diff_values(torch.tensor([0.0]), torch.tensor([-0.0])) != []

    # kill points: stdout lines parse, trials are dealt and seeded, every kind of plan is drawn
    assert faults.event_key("report hf-ctc-dnn update=3 train_obj=0.1 wall_s=1") == ("report hf-ctc-dnn update=3 ", 3)
    assert faults.event_key("hf-update 12 loss 1->0.5 rho 0.9") == ("hf-update 12 ", 12)
    assert faults.event_key("# resumed from x at update 2") is None
    assert faults.last_report([(0.1, "report r update=0 x"), (0.2, "hf-update 1 a"), (0.3, "report r update=1 y")]) == 1
    assert faults.deal(20, ["a", "b", "c"]) == {"a": 7, "b": 7, "c": 6}
    out = faults.Outcome(None, [], set())
    ref = faults.Reference(out, [(1.0, "report r update=0 ", 0), (2.0, "hf-update 1 ", 1), (2.5, "report r update=1 ", 1)],
                           3.0, True, [])
    plans = [faults.draw_plan(random.Random(k), ref, None) for k in range(60)]
    assert plans == [faults.draw_plan(random.Random(k), ref, None) for k in range(60)]
    kinds = {p.kind for p in plans}
    assert kinds == {"time", "line", "write", "inject"}
    # after a checkpoint at update 1, a line plan only waits for lines the resumed run prints again
    assert all(p.line is None for p in (faults.draw_plan(random.Random(k), ref, 1) for k in range(20)))


@pytest.mark.slow
def test_in_process_kill_cuts_a_write_in_half(tmp_path):
    """The INJECT wrapper: at the 2nd write of x.pt the process SIGKILLs itself, leaving the
    first version intact and the second one's temporary file at half its size."""
    code = faults.INJECT.replace("from hfasr.cli import main\nsys.exit(main())", (
        "from hfasr.models import atomic_save\nimport torch\n"
        f"for i in range(3):\n    atomic_save({{'w': torch.zeros(1000) + i}}, {str(tmp_path / 'x.pt')!r})\n"))
    env = dict(faults.hfasr_env(), HFASR_FAULT="x.pt:2:mid")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert torch.load(tmp_path / "x.pt", weights_only=True)["w"][0] == 0  # the 1st write, intact
    (tmp,) = faults.temp_files(tmp_path)
    full = (tmp_path / "x.pt").stat().st_size
    assert tmp.startswith("x.pt.tmp.") and (tmp_path / tmp).stat().st_size == full // 2


# ----------------------------------------------------------------------------------------- slow
@pytest.fixture(scope="module")
def bench_data(tmp_path_factory, yesno_dir):
    work = tmp_path_factory.mktemp("faults")
    return work, faults.build_data(work, yesno_dir)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(faults.TRAINERS))
def test_sigkill_and_resume_is_bit_identical(bench_data, name):
    work, data = bench_data
    trainer = faults.TRAINERS[name]
    tdir = work / name
    tdir.mkdir()
    faults.write_yaml(tdir / "config.yaml", trainer.config)
    ref = faults.run_reference(trainer, data, tdir)
    assert ref.repeat_identical, ref.repeat_problems
    for i in range(2):
        trial = faults.run_trial(trainer, data, tdir, ref, i, seed=11)
        assert trial.identical and not trial.problems, (trial.plans, trial.problems)
        assert len(trial.kill_points) >= 1
