"""WER scoring: hand-counted errors, Kaldi's line formats, CI, errs file, the `hfasr score` CLI."""

from __future__ import annotations

import argparse

import pytest

from hfasr.decode.score import (
    EPS,
    aligned_lines,
    bootstrap_ci,
    errs_text,
    read_text,
    score,
    score_utterance,
    write_results,
    write_text,
)
from hfasr.errors import DataError


def t(s: str) -> list[str]:
    return s.split()


# u1: A B C D -> A X C D E   : 1 sub (B->X), 1 ins at the end (E)
# u2: YES NO YES -> (empty)  : 3 del
# u3: X Y -> Z X Y           : 1 ins at the start (Z)
# u4: A -> A                 : correct
REFS = {"u1": t("A B C D"), "u2": t("YES NO YES"), "u3": t("X Y"), "u4": t("A")}
HYPS = {"u1": t("A X C D E"), "u2": [], "u3": t("Z X Y"), "u4": t("A")}


def test_hand_counted_totals():
    r = score(REFS, HYPS)
    assert (r.ins, r.dels, r.subs, r.errors, r.ref_words) == (2, 3, 1, 6, 10)
    assert (r.sent_errors, r.num_sents, r.num_absent) == (3, 4, 0)
    assert r.wer_line() == "%WER 60.00 [ 6 / 10, 2 ins, 3 del, 1 sub ]"
    assert r.ser_line() == "%SER 75.00 [ 3 / 4 ]"
    assert r.scored_line() == "Scored 4 sentences, 0 not present in hyp."
    per = {u.utt: (u.ins, u.dels, u.subs, u.ref_len) for u in r.utts}
    assert per == {"u1": (1, 0, 1, 4), "u2": (0, 3, 0, 3), "u3": (1, 0, 0, 2), "u4": (0, 0, 0, 1)}


def test_insertions_at_both_ends_and_empty_sides():
    u = score_utterance("x", t("B C"), t("A B C D"))
    assert (u.ins, u.dels, u.subs) == (2, 0, 0)
    assert u.alignment == [(EPS, "A"), ("B", "B"), ("C", "C"), (EPS, "D")]
    u = score_utterance("x", [], t("A B"))  # empty reference: all insertions
    assert (u.ins, u.dels, u.subs, u.ref_len) == (2, 0, 0, 0)
    u = score_utterance("x", [], [])
    assert (u.errors, u.alignment) == (0, [])
    u = score_utterance("x", t("A B C"), [])
    assert (u.ins, u.dels, u.subs) == (0, 3, 0)


def test_kaldi_wer_line_format():
    # 30 utterances of 8 words = 240 words; 6 insertions, 2 deletions, 2 substitutions
    refs = {f"utt{i:02d}": t("YES NO NO YES YES NO YES NO") for i in range(30)}
    hyps = {u: list(w) for u, w in refs.items()}
    for i in range(6):
        hyps[f"utt{i:02d}"] = hyps[f"utt{i:02d}"] + ["YES"]  # insertion at the end
    hyps["utt10"] = hyps["utt10"][1:]  # deletion
    hyps["utt11"] = hyps["utt11"][:-1]  # deletion
    hyps["utt12"] = ["NO"] + hyps["utt12"][1:]  # substitution
    hyps["utt13"] = hyps["utt13"][:-1] + ["YES"]  # substitution
    r = score(refs, hyps)
    assert r.wer_line() == "%WER 4.17 [ 10 / 240, 6 ins, 2 del, 2 sub ]"
    assert r.ser_line() == "%SER 33.33 [ 10 / 30 ]"


@pytest.mark.parametrize("e,n,text", [(1, 8, "12.50"), (2, 3, "66.67"), (1, 6, "16.67"),
                                      (0, 5, "0.00"), (7, 7, "100.00"), (3, 2, "150.00")])
def test_percent_two_decimals(e, n, text):
    refs = {"u": ["A"] * n}
    hyps = {"u": ["A"] * (n - e)} if e <= n else {"u": ["A"] * (n + e)}
    r = score(refs, hyps)
    assert r.errors == e and r.wer_line().startswith(f"%WER {text} [ {e} / {n},")


def test_missing_hypothesis_modes(caplog):
    hyps = {k: v for k, v in HYPS.items() if k != "u1"}
    with pytest.raises(DataError, match="u1"):
        score(REFS, hyps)
    r = score(REFS, hyps, mode="all")  # u1 counts as 4 deletions
    assert (r.ins, r.dels, r.subs, r.ref_words, r.num_absent) == (1, 7, 0, 10, 1)
    assert r.wer_line() == "%WER 80.00 [ 8 / 10, 1 ins, 7 del, 0 sub ] [PARTIAL]"
    assert r.scored_line() == "Scored 4 sentences, 1 not present in hyp."
    assert "u1" in caplog.text
    r = score(REFS, hyps, mode="present")  # u1 not scored
    assert (r.errors, r.ref_words, r.num_sents) == (4, 6, 3)
    assert r.wer_line().endswith("[PARTIAL]")
    r = score(REFS, {**HYPS, "extra": ["A"]})  # hypotheses without reference are ignored
    assert r.errors == 6 and r.num_sents == 4


def test_confidence_interval_contains_estimate():
    r = score(REFS, HYPS)
    ci = bootstrap_ci(r, replications=2000)
    assert 0.0 <= ci.lo <= r.wer <= ci.hi
    assert ci.line() == f"95% CI [{ci.lo:.2f}, {ci.hi:.2f}]"
    perfect = score(REFS, REFS)
    ci0 = bootstrap_ci(perfect, replications=200)
    assert ci0.lo == 0.0 and ci0.hi == pytest.approx(0.0)


def test_errs_file_content(tmp_path):
    r = score(REFS, HYPS)
    ci = bootstrap_ci(r, replications=500)
    wer = write_results(tmp_path, "dev", r, ci)
    lines = wer.read_text().splitlines()
    assert lines[:3] == ["%WER 60.00 [ 6 / 10, 2 ins, 3 del, 1 sub ]", "%SER 75.00 [ 3 / 4 ]",
                         "Scored 4 sentences, 0 not present in hyp."]
    assert lines[3].startswith("95% CI [")
    errs = (tmp_path / "errs-dev.txt").read_text()
    assert errs == errs_text(r, "dev", ci)
    # only utterances with errors are detailed
    assert "u1 ref" in errs and "u2 ref" in errs and "u3 ref" in errs and "u4 ref" not in errs
    assert aligned_lines(r.utts[0]) == [
        "u1 ref  a  B  c  d  ***",
        "u1 hyp  a  X  c  d  E",
        "u1 op   C  S  C  C  I",
        "u1 #csid 3 1 1 0",
    ]
    assert aligned_lines(r.utts[1]) == [
        "u2 ref  YES  NO   YES",
        "u2 hyp  ***  ***  ***",
        "u2 op   D    D    D",
        "u2 #csid 0 0 0 3",
    ]
    assert "     1 B -> X" in errs and "     1 E" in errs and "     2 YES" in errs


def test_text_io(tmp_path):
    p = tmp_path / "text"
    write_text(p, {"b": ["NO"], "a": ["YES", "NO"], "c": []})
    assert p.read_text() == "a YES NO\nb NO\nc\n"
    assert read_text(p) == {"a": ["YES", "NO"], "b": ["NO"], "c": []}
    p.write_text("a YES\n\na NO\n")
    with pytest.raises(DataError, match="'a' appears twice"):
        read_text(p)
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "nope")


def _cli(argv: list[str]) -> argparse.Namespace:
    from hfasr.bin import score as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd, p.parse_args(argv)


def test_score_cli(tmp_path, capsys):
    write_text(tmp_path / "ref.txt", REFS)
    write_text(tmp_path / "hyp.txt", HYPS)
    cmd, args = _cli(["--ref", str(tmp_path / "ref.txt"), "--hyp", str(tmp_path / "hyp.txt"),
                      "--out", str(tmp_path / "out"), "--set", "test", "--replications", "300"])
    cmd.run(args)
    out = capsys.readouterr().out
    assert out.startswith("%WER 60.00 [ 6 / 10, 2 ins, 3 del, 1 sub ]\n%SER 75.00 [ 3 / 4 ]\n")
    assert (tmp_path / "out" / "wer.txt").read_text() == out
    assert (tmp_path / "out" / "errs-test.txt").is_file()
    # a hypothesis file lacking an utterance: error naming it (strict), or scored with --mode all
    write_text(tmp_path / "hyp2.txt", {k: v for k, v in HYPS.items() if k != "u3"})
    cmd, args = _cli(["--ref", str(tmp_path / "ref.txt"), "--hyp", str(tmp_path / "hyp2.txt"),
                      "--out", str(tmp_path / "out2")])
    with pytest.raises(DataError, match="u3"):
        cmd.run(args)
    cmd, args = _cli(["--ref", str(tmp_path / "ref.txt"), "--hyp", str(tmp_path / "hyp2.txt"),
                      "--out", str(tmp_path / "out2"), "--mode", "all", "--replications", "100"])
    cmd.run(args)
    assert "[PARTIAL]" in (tmp_path / "out2" / "wer.txt").read_text()


def test_score_parts_tool(tmp_path):
    """tools/score_parts.sh: one %WER per test part of each decode dir, hand-counted."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "parts.txt").write_text("a1 dev-clean-2\na2 dev-clean-2\nb1 test-other\n")
    (tmp_path / "ref.txt").write_text("a1 THE CAT SAT\na2 ON A MAT\nb1 HELLO THERE\n")
    d = tmp_path / "exp" / "dnn_ce" / "decode_test"
    d.mkdir(parents=True)
    (d / "hyp.txt").write_text("a1 THE CAT\na2 ON A MAT\nb1 HELLO HERE\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(["bash", str(root / "tools" / "score_parts.sh"), str(tmp_path / "parts.txt"),
                          str(tmp_path / "ref.txt"), str(tmp_path / "parts.md"), str(d)],
                         env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "| system | dev-clean-2 | test-other |"
    assert lines[2].startswith("| dnn_ce | 16.67 [") and "| 50.00 [" in lines[2]  # 1/6 deleted, 1/2 substituted
    assert (d / "parts" / "test-other" / "ref.txt").read_text() == "b1 HELLO THERE\n"
