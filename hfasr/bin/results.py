"""``hfasr results EXP``: the WER table of an experiment directory (markdown).

Collects every ``EXP/<model>/decode_<set>/wer.txt`` (Kaldi's ``%WER`` line and the bootstrap
CI written by ``hfasr decode`` / ``hfasr score``) and each model's training wall time: the last
``wall_s`` of ``EXP/<model>/history.jsonl`` (training only, summed over resumed runs), else the
stage wall time the recipes record in ``EXP/marks/.<stage>.seconds`` (marked "stage"). With
``--cer``, a ``%CER`` column too: the character error rate of ``hyp.txt`` against ``ref.txt``
beside each ``wer.txt`` (the characters of the word string, a space between words counting as
one character, as ESPnet scores CER).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

HELP = "WER table (markdown) of an experiment dir"

_STAGE_OF = {"gmm": "gmm", "dnn_ce": "ce", "dnn_ce_pass1": "ce_pass1", "dnn_hf": "hf_ce", "dnn_smbr_hf": "smbr_hf", "dnn_mmi_hf": "mmi_hf",
             "dnn_smbr_sgd": "smbr_sgd", "dnn_mpe_hf": "mpe_hf", "dnn_bmmi_hf": "bmmi_hf",
            "dnn_mmi_sgd": "mmi_sgd"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp", type=Path, help="experiment dir of a recipe (recipes/<corpus>/exp)")
    p.add_argument("--task", default="", help="task name shown in the table")
    p.add_argument("--cer", action="store_true", help="add a %%CER column (hyp.txt / ref.txt of each decode dir)")


def char_error_rate(ref_path: Path, hyp_path: Path) -> tuple[int, int]:
    """(character errors, reference characters) of ``hyp_path`` against ``ref_path`` (Kaldi texts;
    an utterance missing from the hypotheses counts as empty)."""
    import kaldialign

    from hfasr.decode.score import read_text

    refs, hyps = read_text(ref_path), read_text(hyp_path)
    errors = chars = 0
    for utt, words in refs.items():
        r, h = list(" ".join(words)), list(" ".join(hyps.get(utt, [])))
        errors += kaldialign.edit_distance(r, h)["total"]
        chars += len(r)
    return errors, chars


def parse_wer(path: Path) -> dict:
    text = path.read_text()
    m = re.search(r"%WER\s+([\d.]+)\s+\[\s*(\d+)\s*/\s*(\d+),\s*(\d+) ins,\s*(\d+) del,\s*(\d+) sub\s*\]", text)
    if not m:
        return {}
    ci = re.search(r"95% CI \[\s*([\d.]+),\s*([\d.]+)\s*\]", text)
    return {"wer": float(m.group(1)), "errors": int(m.group(2)), "words": int(m.group(3)),
            "ci": (float(ci.group(1)), float(ci.group(2))) if ci else None, "line": m.group(0)}


def train_wall(exp: Path, model: str) -> str:
    """The training wall time of ``exp/model`` for the table (see the module docstring)."""
    hist = exp / model / "history.jsonl"
    if hist.is_file():
        wall = None
        # the last complete record (a run killed while appending leaves a torn last line)
        for ln in reversed([ln for ln in hist.read_text().splitlines() if ln.strip()]):
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                continue
            wall = rec.get("wall_s") if isinstance(rec, dict) else None
            break
        if wall is not None:
            return f"{float(wall):.0f} s"
    secs = exp / "marks" / f".{_STAGE_OF.get(model, model)}.seconds"
    return f"{float(secs.read_text()):.0f} s (stage)" if secs.is_file() else "-"


def run(args: argparse.Namespace) -> None:
    from hfasr.errors import DataError

    if not args.exp.is_dir():
        raise DataError(f"experiment dir not found: {args.exp}")
    rows = []
    for wer in sorted(args.exp.glob("*/decode_*/wer.txt")):
        model = wer.parent.parent.name
        sset = wer.parent.name[len("decode_"):]
        r = parse_wer(wer)
        if not r:
            continue
        t = train_wall(args.exp, model)
        ci = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if r["ci"] else "-"
        cer = ""
        if args.cer:
            ref, hyp = wer.parent / "ref.txt", wer.parent / "hyp.txt"
            if ref.is_file() and hyp.is_file():
                e, n = char_error_rate(ref, hyp)
                cer = f" {100 * e / max(n, 1):.2f} |"
            else:
                cer = " - |"
        rows.append(f"| {args.task} | {sset} | {model} | {r['wer']:.2f} | {ci} | {r['errors']}/{r['words']} |{cer} {t} |")
    cer_head = (" %CER |", "---|") if args.cer else ("", "")
    print(f"| task | set | model | %WER | 95% CI | errors/words |{cer_head[0]} train wall time |")
    print(f"|---|---|---|---|---|---|{cer_head[1]}---|")
    for r in rows:
        print(r)
