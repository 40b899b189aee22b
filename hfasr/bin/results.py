"""``hfasr results EXP``: the WER table of an experiment directory (markdown).

Collects every ``EXP/<model>/decode_<set>/wer.txt`` (Kaldi's ``%WER`` line and the bootstrap
CI written by ``hfasr decode`` / ``hfasr score``) and the stage wall times the recipes record
in ``EXP/marks/.<stage>.seconds``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

HELP = "WER table (markdown) of an experiment dir"

_STAGE_OF = {"gmm": "gmm", "dnn_ce": "ce", "dnn_hf": "hf_ce", "dnn_smbr_hf": "smbr_hf", "dnn_mmi_hf": "mmi_hf",
             "dnn_smbr_sgd": "smbr_sgd", "dnn_mpe_hf": "mpe_hf", "dnn_bmmi_hf": "bmmi_hf",
            "dnn_mmi_sgd": "mmi_sgd"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp", type=Path, help="experiment dir of a recipe (recipes/<corpus>/exp)")
    p.add_argument("--task", default="", help="task name shown in the table")


def parse_wer(path: Path) -> dict:
    text = path.read_text()
    m = re.search(r"%WER\s+([\d.]+)\s+\[\s*(\d+)\s*/\s*(\d+),\s*(\d+) ins,\s*(\d+) del,\s*(\d+) sub\s*\]", text)
    if not m:
        return {}
    ci = re.search(r"95% CI \[\s*([\d.]+),\s*([\d.]+)\s*\]", text)
    return {"wer": float(m.group(1)), "errors": int(m.group(2)), "words": int(m.group(3)),
            "ci": (float(ci.group(1)), float(ci.group(2))) if ci else None, "line": m.group(0)}


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
        secs = args.exp / "marks" / f".{_STAGE_OF.get(model, model)}.seconds"
        t = f"{float(secs.read_text()):.0f} s" if secs.is_file() else "-"
        ci = f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]" if r["ci"] else "-"
        rows.append(f"| {args.task} | {sset} | {model} | {r['wer']:.2f} | {ci} | {r['errors']}/{r['words']} | {t} |")
    print("| task | set | model | %WER | 95% CI | errors/words | train wall time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
