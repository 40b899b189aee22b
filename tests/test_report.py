"""`hfasr report`: reading history.jsonl, the table, time-to-target, the PNG, and bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from hfasr.bin import COMMANDS
from hfasr.bin import report as cmd
from hfasr.errors import DataError

# HF reaches SGD's final objective (-0.80) at update 2 (100 s); SGD itself first gets there at
# its last report (400 s): ratio 4. SGD never reaches HF's final objective (-0.86).
HF = [(0, 0.0, -0.70, None), (1, 50.0, -0.78, 12.0), (2, 100.0, -0.81, 11.0), (3, 150.0, -0.86, 10.5)]
SGD = [(0, 0.0, -0.70, None), (1, 100.0, -0.74, 12.5), (2, 200.0, -0.77, None), (3, 300.0, -0.79, 11.8),
       (4, 400.0, -0.80, 11.6)]
WER_TXT = "%WER 8.00 [ 40 / 500, 10 ins, 5 del, 25 sub ]\n%SER 20.00 [ 20 / 100 ]\nScored 100 sentences, 0 not present in hyp.\n95% CI [5.41, 10.56]\n"


def write_run(d: Path, name: str, opt: str, points, criterion: str = "smbr", wer: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for u, wall, obj, dev_wer in points:
        rec = {"run": name, "optimizer": opt, "criterion": criterion, "update": u, "wall_s": wall, "dev_obj": obj,
               "dev_acc": -obj, "dev_wer": dev_wer, "damping": 0.01}
        if dev_wer is None and u % 2:
            del rec["dev_wer"]  # missing key and null are both "not recorded"
        lines.append(json.dumps(rec))
    (d / "history.jsonl").write_text("\n".join(lines) + "\n\n")
    if wer is not None:
        (d / "decode_test").mkdir()
        (d / "decode_test" / "wer.txt").write_text(wer)
    return d


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p.parse_args(argv)


def test_report_writes_png_and_table(tmp_path, capsys):
    assert "report" in COMMANDS
    hf = write_run(tmp_path / "hf", "hf-smbr", "hf", HF, wer=WER_TXT)
    sgd = write_run(tmp_path / "sgd", "sgd-smbr", "sgd", SGD)
    mmi = write_run(tmp_path / "mmi", "hf-mmi", "hf", [(0, 0.0, 0.5, None), (1, 30.0, 0.4, 20.0)], criterion="mmi")
    out = tmp_path / "rep" / "cmp"
    cmd.run(_args([str(hf), str(sgd), str(mmi), "--out", str(out)]))
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    md = Path(f"{out}.md").read_text()
    assert capsys.readouterr().out == md
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if line.startswith("| ") and not line.startswith("| run ")}
    assert rows["hf-smbr"] == ["hf-smbr", "hf", "smbr", "3", "150", "-0.8600", "-0.8600", "10.50", "8.00 [5.41, 10.56]"]
    assert rows["sgd-smbr"] == ["sgd-smbr", "sgd", "smbr", "4", "400", "-0.8000", "-0.8000", "11.60", "-"]
    assert rows["hf-mmi"][1:8] == ["hf", "mmi", "1", "30", "0.4000", "0.4000", "20.00"]
    assert ("time for hf-smbr to reach sgd-smbr's final dev objective (-0.8000): 100 s (update 2); "
            "sgd-smbr first reaches it at 400 s; ratio sgd-smbr/hf-smbr = 4.00x") in md
    assert "time for sgd-smbr to reach hf-smbr's final dev objective (-0.8600): not reached" in md
    assert "hf-mmi to reach" not in md and "reach hf-mmi" not in md  # different criterion: no comparison


def test_time_to_target_and_best(tmp_path):
    hf = cmd.read_history(write_run(tmp_path / "hf", "hf-smbr", "hf", HF))
    # non-monotone run: its final objective was first reached before the end
    sgd = cmd.read_history(write_run(tmp_path / "sgd", "sgd", "sgd", [(0, 0.0, -0.7, None), (1, 10.0, -0.83, None),
                                                                        (2, 20.0, -0.80, None), (3, 30.0, -0.81, None)]))
    assert [p.update for p in hf.points] == [0, 1, 2, 3]
    assert cmd.time_to_target(hf, -0.78).wall_s == 50.0  # <= target counts
    assert cmd.time_to_target(hf, -0.9) is None
    assert sgd.best_dev_obj == -0.83 and sgd.final.dev_obj == -0.81
    c = cmd.compare(hf, sgd)  # target -0.81: HF at 100 s, SGD itself first at 10 s
    assert (c.run_time, c.run_update, c.other_time) == (100.0, 2, 10.0)
    assert c.ratio == pytest.approx(0.1)
    c = cmd.compare(sgd, hf)
    assert c.run_time is None and c.ratio is None and c.other_time == 150.0
    assert hf.final_dev_wer == 10.5 and sgd.final_dev_wer is None


def test_objectives_at_different_acoustic_scales_are_not_compared(tmp_path, capsys):
    hf = write_run(tmp_path / "hf", "hf-smbr", "hf", HF)
    sgd = write_run(tmp_path / "sgd", "sgd-smbr", "sgd", SGD)
    (hf / "config.yaml").write_text("criterion: smbr\nsequence:\n  acoustic_scale: 1.0\n")
    (sgd / "config.yaml").write_text("criterion: smbr\nsequence:\n  acoustic_scale: 0.1\n")
    runs = [cmd.read_history(hf), cmd.read_history(sgd)]
    assert [r.acoustic_scale for r in runs] == [1.0, 0.1] and cmd.comparisons(runs) == []
    md = cmd.markdown(runs)
    assert "| smbr (κ 1) |" in md and "| smbr (κ 0.1) |" in md and "time for" not in md
    assert "hf-smbr and sgd-smbr: smbr objectives at acoustic scales 1 and 0.1 are not comparable" in md


def test_resumed_run_keeps_last_line_per_update(tmp_path):
    d = write_run(tmp_path / "r", "r", "hf", HF)
    with (d / "history.jsonl").open("a") as f:
        f.write(json.dumps({"run": "r", "optimizer": "hf", "criterion": "smbr", "update": 2, "wall_s": 99.0,
                            "dev_obj": -0.9}) + "\n")
    run = cmd.read_history(d)
    assert [(p.update, p.dev_obj) for p in run.points] == [(0, -0.7), (1, -0.78), (2, -0.9), (3, -0.86)]


def test_same_label_in_two_dirs_made_unique(tmp_path, capsys):
    a = write_run(tmp_path / "a", "hf", "hf", HF)
    b = write_run(tmp_path / "b", "hf", "hf", HF)
    cmd.run(_args([str(a), str(b), "--out", str(tmp_path / "o")]))
    md = capsys.readouterr().out
    assert f"| hf ({a}) |" in md and f"| hf ({b}) |" in md


@pytest.mark.parametrize("line, msg", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"run": "x", "optimizer": "hf", "criterion": "smbr", "update": 1, "wall_s": 1.0}', "missing key 'dev_obj'"),
    ('{"run": "x", "optimizer": "hf", "criterion": "smbr", "update": 1.5, "wall_s": 1.0, "dev_obj": 0}',
     "'update' must be an integer"),
    ('{"run": "x", "optimizer": "hf", "criterion": "smbr", "update": 1, "wall_s": "1", "dev_obj": 0}',
     "'wall_s' must be a number"),
    ('{"run": "x", "optimizer": "hf", "criterion": "smbr", "update": 1, "wall_s": 1, "dev_obj": 0, "dev_wer": "9%"}',
     "'dev_wer' must be a number"),
    ('{"run": "y", "optimizer": "hf", "criterion": "smbr", "update": 1, "wall_s": 1, "dev_obj": 0}',
     "run 'y' differs from 'x'"),
])
def test_bad_line_names_file_and_line(tmp_path, line, msg):
    d = tmp_path / "exp"
    d.mkdir()
    good = json.dumps({"run": "x", "optimizer": "hf", "criterion": "smbr", "update": 0, "wall_s": 0.0, "dev_obj": 0.1})
    (d / "history.jsonl").write_text(f"{good}\n\n{line}\n")
    with pytest.raises(DataError, match=f"history.jsonl:3: .*{msg}"):
        cmd.read_history(d)


def test_missing_or_empty_history(tmp_path):
    with pytest.raises(DataError, match="history file not found: .*nope/history.jsonl"):
        cmd.run(_args([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]))
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "history.jsonl").write_text("\n")
    with pytest.raises(DataError, match="history.jsonl: no records"):
        cmd.read_history(tmp_path / "e")
    d = write_run(tmp_path / "w", "w", "hf", HF, wer="garbage\n")
    with pytest.raises(DataError, match="decode_test/wer.txt: no Kaldi '%WER"):
        cmd.read_history(d)


def test_results_cer_column(tmp_path, capsys):
    """`hfasr results --cer`: character errors of hyp.txt against ref.txt, a space counting as a character."""
    from hfasr.bin.results import char_error_rate
    from hfasr.cli import main

    d = tmp_path / "exp" / "dnn_ce" / "decode_test"
    d.mkdir(parents=True)
    (d / "wer.txt").write_text(WER_TXT)
    (d / "ref.txt").write_text("u1 AB C\nu2 D\n")
    (d / "hyp.txt").write_text("u1 AB D\n")  # 1 substitution; u2 missing = 1 deletion
    assert char_error_rate(d / "ref.txt", d / "hyp.txt") == (2, 5)
    assert main(["results", str(tmp_path / "exp"), "--task", "t", "--cer"]) == 0
    out = capsys.readouterr().out
    assert "| %CER |" in out and "| t | test | dnn_ce | 8.00 | [5.41, 10.56] | 40/500 | 40.00 |" in out


def test_fine_tuned_ctc_run_counts_its_init_runs_time(tmp_path, caplog):
    """A CTC run started with --init (init.txt) has the init run's training time added: the
    time-to-target ratios against that run include it."""
    adam = write_run(tmp_path / "adam", "adam-ctc", "adam", [(0, 0.0, 0.9, None), (1, 60.0, 0.5, None),
                                                           (2, 120.0, 0.40, None)], criterion="ctc")
    hf = write_run(tmp_path / "hf", "hf-ctc", "hf", [(0, 0.0, 0.40, None), (1, 30.0, 0.38, None)], criterion="ctc")
    (hf / "init.txt").write_text(f"{adam / 'final.pt'}\n")
    r = cmd.read_history(hf)
    assert r.init_dir == adam and r.init_seconds == 120.0
    assert [p.wall_s for p in r.points] == [120.0, 150.0]
    text = cmd.markdown([cmd.read_history(adam), r])
    assert "fine-tuned from" in text and "120 s" in text
    # hf's start (update 0) is Adam's model re-measured: it counts from hf's own first update on
    c = cmd.compare(r, cmd.read_history(adam))
    assert (c.run_time, c.run_update) == (150.0, 1) and c.ratio == pytest.approx(120 / 150)
    other = write_run(tmp_path / "other", "hf2-ctc", "hf", [(0, 0.0, 0.40, None)], criterion="ctc")
    assert cmd.compare(cmd.read_history(other), cmd.read_history(adam)).run_time == 0.0  # not started from adam: its start counts
    # an init run without a history: a warning, times unchanged
    (hf / "init.txt").write_text(f"{tmp_path / 'gone' / 'final.pt'}\n")
    r = cmd.read_history(hf)
    assert r.init_dir is None and [p.wall_s for p in r.points] == [0.0, 30.0]
    assert "no history.jsonl" in caplog.text
    # sequence runs are not shifted (their --init is the CE model every compared run shares)
    seq = write_run(tmp_path / "seq", "hf-smbr", "hf", HF)
    (seq / "init.txt").write_text(f"{adam / 'final.pt'}\n")
    assert cmd.read_history(seq).points[0].wall_s == 0.0


def test_selected_model_is_the_one_reported_and_compared(tmp_path):
    """A run whose final.pt is a kept earlier model (``select``): the table shows that model's
    update, dev objective and WER, and other runs are timed to its dev objective; an initial
    model already at the target gives no ratio (was ∞x / 0.00x)."""
    import torch

    adam = write_run(tmp_path / "adam", "adam-ctc", "adam", [(0, 0.0, 0.30, 100.0), (1, 60.0, 0.50, 80.0),
                                                           (2, 120.0, 0.45, 70.0), (3, 180.0, 0.60, 75.0)],
                     criterion="ctc", wer=WER_TXT)
    torch.save({"update": 2, "state_dict": {}}, adam / "final.pt")
    hf = write_run(tmp_path / "hf", "hf-ctc", "hf", [(0, 0.0, 0.60, 70.0), (1, 30.0, 0.44, 69.0)], criterion="ctc")
    (hf / "init.txt").write_text(f"{adam / 'final.pt'}\n")
    ra, rh = cmd.read_history(adam), cmd.read_history(hf)
    assert ra.chosen_update == 2 and ra.chosen.dev_obj == 0.45 and ra.chosen_dev_wer == 70.0
    assert rh.chosen_update is None and rh.chosen is rh.final  # no final.pt: the last report
    md = cmd.markdown([ra, rh])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if line.startswith("| ") and not line.startswith("| run ")}
    assert "| chosen update |" in md and "chosen dev obj" in md
    assert rows["adam-ctc"][3:9] == ["3", "2", "180", "0.4500", "0.3000", "70.00"]
    # hf (fine-tuned from adam's chosen model) passes 0.45 at its first update (180 + 30 s); adam's
    # own initial model is already below it (the FSDD situation: an untrained model's low dev loss)
    c = cmd.compare(rh, ra)
    assert (c.target, c.run_time, c.other_time) == (0.45, 210.0, 0.0)
    assert "adam-ctc's initial model is already there; no ratio" in c.line()
    c = cmd.compare(ra, rh)
    assert c.run_time == 0.0 and "its initial model is already there (update 0); no ratio" in c.line()
    # an unreadable final.pt: the last report, with a working report
    (adam / "final.pt").write_bytes(b"not a checkpoint")
    assert cmd.read_history(adam).chosen_update is None
