"""Dev-set ablation of the hybrid CE-DNN: which setting makes the DNN beat its GMM on unseen speakers.

Each *variant* trains a CE DNN (``hfasr train --criterion ce``) from a base config with some keys
overridden, optionally on another data dir (features with speaker CMVN, speed perturbation) or
another alignment dir (realignment with a DNN), then decodes the **dev** set (speaker-disjoint from
training) with an LM-weight / word-penalty sweep and, per variant, each prior scale. The table
(markdown, also ``OUT/table.md``) gives dev frame accuracy and CE of the final model, the best
dev WER of the sweep, its LMWT / WIP, and the training time. Nothing here touches the test set.

Variants file (YAML)::

    base: recipes/fsdd/conf/train_ce.yaml     # the base TrainConfig
    set: {dnn: {activation: relu}}            # overrides of every variant (optional)
    data_dir: /tmp/x/fsdd/data                # defaults of every variant
    gmm_dir: /tmp/x/fsdd/exp/gmm              # HCLG (graph/), final.mdl, alignments
    task: fsdd_conn
    variants:
      - name: base
      - name: dropout0.2
        set: {dnn: {dropout: 0.2}}
      - name: spkcmvn
        data_dir: /tmp/x/fsdd_spk/data
        gmm_dir: /tmp/x/fsdd_spk/exp/gmm
      - name: prior0.5
        prior_scales: [0.5]
      - name: realign
        ali_dir: /tmp/x/fsdd/exp/dnn_ali

Usage: ``python bench/ce_ablation.py VARIANTS.yaml --out DIR [--jobs 2] [--only a,b]``.
A variant whose ``OUT/<name>/result.json`` exists is not rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sh(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")


def best_of_sweep(path: Path) -> tuple[float, str]:
    """(best %WER, 'LMWT l WIP w') of a ``sweep.txt``."""
    lines = path.read_text().splitlines()
    lm, wip = lines[-1].split()[2], lines[-1].split()[4]
    for line in lines[:-1]:
        f = line.split()
        if f[1] == lm and f[3] == wip:
            return float(re.search(r"%WER ([0-9.]+)", line).group(1)), f"LMWT {lm} WIP {wip}"
    raise ValueError(f"{path}: best point not found")


def run_variant(spec: dict, defaults: dict, base_cfg: dict, out: Path) -> dict:
    name = spec["name"]
    d = out / name
    res_path = d / "result.json"
    if res_path.is_file():
        return json.loads(res_path.read_text())
    d.mkdir(parents=True, exist_ok=True)
    log = d / "log.txt"
    data_dir = spec.get("data_dir", defaults["data_dir"])
    gmm_dir = spec.get("gmm_dir", defaults["gmm_dir"])
    ali_dir = spec.get("ali_dir", defaults.get("ali_dir") if "gmm_dir" not in spec else gmm_dir) or gmm_dir
    task = defaults["task"]
    cfg = merge(merge(base_cfg, defaults.get("set", {})), spec.get("set", {}))
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    model_dir = d / "model"
    t0 = time.time()
    if not (model_dir / "final.pt").is_file():
        sh(["hfasr", "train", "--criterion", "ce", "--optimizer", cfg.get("optimizer", "adam"), "--data-dir", data_dir,
            "--task", task, "--ali-dir", ali_dir, "--out", str(model_dir), "--config", str(d / "train.yaml"),
            "--resume", "--quiet"], log)
    train_s = time.time() - t0
    hist = [json.loads(x) for x in (model_dir / "history.jsonl").read_text().splitlines() if x.strip()]
    last = hist[-1]
    rows = []
    for ps in spec.get("prior_scales", defaults.get("prior_scales", [1.0])):
        ll = d / f"loglikes_dev_p{ps:g}.pt"
        ref = d / "ref_dev.txt"
        if not ll.is_file():
            sh(["hfasr", "loglikes", "--model", str(model_dir / "final.pt"), "--data-dir", data_dir, "--task", task,
                "--split", "dev", "--out", str(ll), "--text", str(ref), "--prior-scale", str(ps)], log)
        dec = d / f"decode_dev_p{ps:g}"
        if not (dec / "sweep.txt").is_file():
            sh(["hfasr", "decode", "--loglikes", str(ll), "--ref", str(ref), "--dev-loglikes", str(ll),
                "--dev-ref", str(ref), "--graph-dir", f"{gmm_dir}/graph", "--model-dir", gmm_dir, "--out", str(dec),
                "--set", "dev", "--lm-weights", defaults.get("lm_weights", "2,3,4,5,6,7,9,11"),
                "--word-penalties", defaults.get("word_penalties", "0,0.5,1")], log)
        wer, point = best_of_sweep(dec / "sweep.txt")
        rows.append({"name": name if len(spec.get("prior_scales", [1])) == 1 else f"{name} prior{ps:g}",
                     "prior_scale": ps, "dev_wer": wer, "point": point})
    res = {"name": name, "dev_acc": last.get("dev_acc"), "dev_ce": last.get("dev_obj"), "train_s": train_s,
           "wall_s": last.get("wall_s"), "epochs": last.get("epoch"), "rows": rows, "spec": spec}
    res_path.write_text(json.dumps(res, indent=1))
    return res


def gmm_row(defaults: dict, out: Path) -> dict:
    """Dev WER of the GMM itself (acoustic scale swept like the DNN's LM weight)."""
    res_path = out / "gmm" / "result.json"
    if res_path.is_file():
        return json.loads(res_path.read_text())
    from hfasr.bin.gmm import lm_weight_sweep, load_split

    cuts, refs = load_split(Path(defaults["data_dir"]), defaults["task"], "dev")
    weights = [float(x) for x in defaults.get("gmm_lm_weights", "4,5,6,7,9,10,11,13,15,17").split(",")]
    lmwt, result = min(lm_weight_sweep(Path(defaults["gmm_dir"]), cuts, refs, weights), key=lambda p: p[1].errors)
    (out / "gmm").mkdir(parents=True, exist_ok=True)
    res = {"name": "gmm", "dev_acc": None, "dev_ce": None, "train_s": None, "epochs": None,
           "rows": [{"name": "GMM (monophone)", "prior_scale": None, "dev_wer": round(result.wer, 2),
                     "point": f"LMWT {lmwt:g} WIP 0"}]}
    res_path.write_text(json.dumps(res, indent=1))
    return res


def table(results: list[dict]) -> str:
    lines = ["| variant | dev frame acc | dev CE | dev %WER (best of sweep) | LMWT / WIP | train s |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            acc = f"{100 * r['dev_acc']:.2f}" if r["dev_acc"] is not None else "-"
            ce = f"{r['dev_ce']:.3f}" if r["dev_ce"] is not None else "-"
            ts = f"{r['train_s']:.0f}" if r["train_s"] is not None else "-"
            lines.append(f"| {row['name']} | {acc} | {ce} | {row['dev_wer']:.2f} | {row['point']} | {ts} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    args = ap.parse_args()
    spec = yaml.safe_load(args.variants.read_text())
    base_cfg = yaml.safe_load(Path(spec["base"]).read_text())
    base_cfg["num_threads"] = 1
    variants = spec["variants"]
    if args.only:
        keep = set(args.only.split(","))
        variants = [v for v in variants if v["name"] in keep]
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futs = [pool.submit(run_variant, v, spec, base_cfg, args.out) for v in variants]
        results = []
        for v, f in zip(variants, futs):
            try:
                results.append(f.result())
            except (RuntimeError, OSError, ValueError) as e:  # report; go on with the other variants
                print(f"variant {v['name']}: {e}", file=sys.stderr)
    if not args.only:
        results.insert(0, gmm_row(spec, args.out))
    text = table(results)
    (args.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
