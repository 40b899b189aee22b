"""How every stage scales with corpus size (issue 16): the synth recipe at k × its default
training size, each stage's peak resident memory and wall time, bytes per arc and arcs per frame.

    python bench/scale.py --work /tmp/scale --factors 1 4 16 --out bench/results/scale.md

For each factor k, the synth recipe (``recipes/synth/run.sh``, stages 1-8 with ``--seq-runs
smbr_hf``) runs in ``WORK/k`` with ``num_train`` = k × 2000 (dev and test unchanged), with
``HFASR_RESOURCE_LOG`` set: every ``hfasr`` command appends its wall time and peak RSS (of its
own process and of its largest worker) to ``WORK/k/resources.jsonl`` (:mod:`hfasr.cli`). A
factor whose run finished is not rerun (delete ``WORK/k`` to redo it). The table gives, per
stage, the peak RSS (the larger of the process and its largest worker; workers run beside it, so
the machine's peak can be up to the sum) and the wall time, each also as a ratio to factor 1
(the bar: RSS at 16× ≤ 1.5× the 1× figure, time within 1.3× of linear).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE_TRAIN = 2000

# stage name -> how its hfasr command line is recognised in the resource log
STAGES = [
    ("prepare", lambda a: a[0] == "prepare"),
    ("features", lambda a: a[0] == "features"),
    ("lang", lambda a: a[0] == "lang"),
    ("gmm", lambda a: a[0] == "gmm"),
    ("ce train", lambda a: a[0] == "train" and _opt(a, "--criterion") == "ce"),
    ("loglikes", lambda a: a[0] == "loglikes" and "dnn_ce" in _opt(a, "--model")),
    ("decode", lambda a: a[0] == "decode" and "dnn_ce" in _opt(a, "--out")),
    ("lattices", lambda a: a[0] == "lattices"),
    ("hf-smbr train", lambda a: a[0] == "train" and _opt(a, "--criterion") == "smbr"),
    ("hf-smbr per update", lambda a: False),  # the stage above divided by its number of updates
]


def _opt(argv: list[str], key: str) -> str:
    return argv[argv.index(key) + 1] if key in argv and argv.index(key) + 1 < len(argv) else ""


def run_factor(work: Path, k: int, nj: int, smbr_updates: int = 0) -> Path:
    d = work / f"x{k}"
    done = d / "finished"
    if done.is_file():
        return d
    conf = d / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "recipes" / "synth" / "conf").glob("*.yaml"):
        (conf / f.name).write_text(f.read_text())
    syn = yaml.safe_load((conf / "synth.yaml").read_text())
    syn["num_train"] = BASE_TRAIN * k
    (conf / "synth.yaml").write_text(yaml.safe_dump(syn))
    if smbr_updates:
        seq = yaml.safe_load((conf / "seq_smbr_hf.yaml").read_text())
        seq.setdefault("hf", {})["updates"] = smbr_updates
        (conf / "seq_smbr_hf.yaml").write_text(yaml.safe_dump(seq))
    log = d / "resources.jsonl"
    if log.exists():
        log.unlink()
    env = {**os.environ, "HFASR_RESOURCE_LOG": str(log)}
    cmd = [str(ROOT / "recipes" / "synth" / "run.sh"), "--data", str(d / "data"), "--exp", str(d / "exp"), "--conf",
           str(conf), "--nj", str(nj), "--stop-stage", "8", "--seq-runs", "smbr_hf"]
    print(f"== factor {k}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(d / "run.log", "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:
        sys.exit(f"factor {k}: the recipe failed (exit {rc}); see {d / 'run.log'}")
    done.write_text(f"{time.time() - t0:.1f}\n")
    return d


def stage_stats(d: Path) -> dict[str, dict]:
    recs = [json.loads(x) for x in (d / "resources.jsonl").read_text().splitlines() if x.strip()]
    out: dict[str, dict] = {}
    for name, match in STAGES:
        rows = [r for r in recs if r["argv"] and match(r["argv"])]
        if rows:
            out[name] = {"wall_s": sum(r["wall_s"] for r in rows),
                         "rss_mb": max(max(r["max_rss_mb"], r["max_rss_children_mb"]) for r in rows),
                         "rss_self_mb": max(r["max_rss_mb"] for r in rows)}
    hist = d / "exp" / "dnn_smbr_hf" / "history.jsonl"
    if "hf-smbr train" in out and hist.is_file():
        n = sum(1 for x in hist.read_text().splitlines() if x.strip()) - 1  # update 0 is the initial model
        out["hf-smbr train"]["updates"] = n
        out["hf-smbr per update"] = {**out["hf-smbr train"], "wall_s": out["hf-smbr train"]["wall_s"] / max(n, 1)}
    return out


def lattice_stats(d: Path) -> dict:
    from hfasr.lattice.generate import lattice_path, load_lattices

    lat_dir = d / "exp" / "lats"
    disk = sum(f.stat().st_size for f in lat_dir.glob("lats_train.*.pt") if not f.name.endswith(".index.pt"))
    stores = load_lattices(lattice_path(lat_dir, "train"))["stores"]
    arcs = sum(int(s.num_arcs) for s in stores)
    frames = sum(int(s.total_frames) for s in stores)
    mem = sum(int(s.nbytes()) for s in stores)
    return {"arcs": arcs, "frames": frames, "bytes_per_arc_disk": disk / max(arcs, 1),
            "bytes_per_arc_mem": mem / max(arcs, 1), "arcs_per_frame": arcs / max(frames, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--nj", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="markdown table (and a .png beside it)")
    ap.add_argument("--smbr-updates", default="", help="K:N,...: HF-sMBR updates of factor K (default: the "
                    "recipe's); the table compares HF-sMBR time per update")
    args = ap.parse_args()
    args.smbr_updates = {int(k): int(n) for k, n in (x.split(":") for x in args.smbr_updates.split(",") if x)}
    results = {}
    for k in args.factors:
        d = run_factor(args.work, k, args.nj, args.smbr_updates.get(k, 0))
        results[k] = {"stages": stage_stats(d), "lattices": lattice_stats(d),
                      "total_s": float((d / "finished").read_text())}
        print(json.dumps({k: results[k]}), flush=True)
    base = results[min(results)]
    k0 = min(results)
    lines = [f"# bench/scale.py: the synth recipe at {', '.join(f'{k}x' for k in results)} its training size", "",
             (f"`python bench/scale.py --work {args.work} --factors {' '.join(map(str, args.factors))}"
              f"{' --smbr-updates ' + smbr if (smbr := ','.join(f'{k}:{n}' for k, n in args.smbr_updates.items())) else ''}"
              f"{' --out ' + str(args.out) if args.out else ''}` (train utterances: "
              f"{', '.join(str(BASE_TRAIN * k) for k in results)})"), "",
             "| stage | " + " | ".join(f"{k}x RSS MB | {k}x wall s" for k in results) + " | RSS ratio | time / linear |",
             "|---|" + "---:|---:|" * len(results) + "---:|---:|"]
    kmax = max(results)
    for name, _ in STAGES:
        cells, ok = [], all(name in results[k]["stages"] for k in results)
        for k in results:
            s = results[k]["stages"].get(name)
            cells += [f"{s['rss_mb']:.0f}", f"{s['wall_s']:.0f}"] if s else ["-", "-"]
        if ok and kmax != k0:
            b, t = base["stages"][name], results[kmax]["stages"][name]
            ratio = f"{t['rss_mb'] / b['rss_mb']:.2f}"
            lin = f"{t['wall_s'] / (b['wall_s'] * kmax / k0):.2f}"
        else:
            ratio = lin = "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} | {lin} |")
    lines += ["", "| factor | train arcs | arcs / frame | bytes / arc on disk | bytes / arc in memory | recipe wall s |",
              "|---:|---:|---:|---:|---:|---:|"]
    for k, r in results.items():
        L = r["lattices"]
        lines.append(f"| {k} | {L['arcs']} | {L['arcs_per_frame']:.1f} | {L['bytes_per_arc_disk']:.1f} | "
                     f"{L['bytes_per_arc_mem']:.1f} | {r['total_s']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            ks = sorted(results)
            for name, _ in STAGES:
                if all(name in results[k]["stages"] for k in ks):
                    axes[0].plot([BASE_TRAIN * k for k in ks], [results[k]["stages"][name]["rss_mb"] for k in ks],
                                 "o-", label=name)
                    axes[1].plot([BASE_TRAIN * k for k in ks], [results[k]["stages"][name]["wall_s"] for k in ks],
                                 "o-", label=name)
            for ax, yl in zip(axes, ("peak RSS (MB)", "wall time (s)")):
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("training utterances")
                ax.set_ylabel(yl)
                ax.grid(True, which="both", alpha=0.3)
            axes[1].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(args.out.with_suffix(".png"), dpi=110)
        except ImportError:
            pass


if __name__ == "__main__":
    main()
