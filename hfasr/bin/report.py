"""``hfasr report EXP_DIR [EXP_DIR ...] --out PREFIX``: compare training runs of any criterion.

Each ``EXP_DIR`` holds ``history.jsonl`` (written by ``hfasr train`` for every criterion and
optimizer, :mod:`hfasr.train.experiment`), one JSON object per report::

    {"run": "hf-smbr", "optimizer": "hf", "criterion": "smbr", "update": 3, "wall_s": 812.4,
     "dev_obj": -0.8312, "heldout_obj": -0.83, "train_obj": -0.85, "dev_acc": 0.71, "dev_wer": 9.4}

``run`` (label), ``optimizer`` (``hf`` / ``sgd`` / ``adam``), ``criterion`` (``ce`` / ``smbr`` /
``mmi`` / ``ctc`` / ...), ``update`` (HF update or first-order report; 0 = the initial model),
``wall_s`` (cumulative training seconds) and ``dev_obj`` (the criterion's dev objective, lower
is better) are required; ``heldout_obj``, ``train_obj``, ``dev_acc`` and ``dev_wer`` (percent) may be missing
or null. Blank lines are skipped; unknown keys are ignored; one file holds one run (one
``run`` label). A repeated ``update`` (a resumed run) replaces the earlier line. An optional
``EXP_DIR/decode_test/wer.txt`` (Kaldi ``%WER`` line and ``95% CI [lo, hi]``, as written by
``hfasr decode`` / ``hfasr score``) gives the test WER.

Writes ``PREFIX.png`` (dev objective, one row per criterion, and dev WER against updates and
against wall time, one line per run) and ``PREFIX.md`` (also printed): a table per run and, for every ordered pair of
runs with the same criterion, the wall time each needs to first reach the other's final dev
objective (:func:`time_to_target`) and the ratio of the two times.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hfasr.bin.results import parse_wer
from hfasr.errors import DataError
from hfasr.fileio import atomic_path, write_text

log = logging.getLogger(__name__)

HELP = "plots and tables comparing training runs (dev objective / WER vs updates and wall time)"

REQUIRED = {"run": str, "optimizer": str, "criterion": str, "update": int, "wall_s": float, "dev_obj": float}
OPTIONAL = ("heldout_obj", "train_obj", "dev_acc", "dev_wer")


@dataclass
class Point:
    """One line of ``history.jsonl``."""

    update: int
    wall_s: float
    dev_obj: float
    heldout_obj: float | None = None
    train_obj: float | None = None
    dev_acc: float | None = None
    dev_wer: float | None = None


@dataclass
class Run:
    """One experiment dir: its labels, points (in update order) and test WER if decoded."""

    run: str
    optimizer: str
    criterion: str
    exp_dir: Path
    points: list[Point] = field(default_factory=list)
    test_wer: dict | None = None  # parse_wer's dict: wer, errors, words, ci (or None), line
    # sequence criteria: the acoustic scale of the objective (config.yaml's sequence.acoustic_scale);
    # objectives at different scales are not comparable
    acoustic_scale: float | None = None
    # CTC run fine-tuned from another run's model (init.txt): that run's training seconds,
    # already added to every point's wall_s, and its dir
    init_seconds: float = 0.0
    init_dir: Path | None = None
    # the update of the run's final.pt when it is not the last report (``select: dev_obj|dev_wer``
    # with ``keep_models``): the model the run hands over and that was decoded
    chosen_update: int | None = None

    @property
    def final(self) -> Point:
        return self.points[-1]

    @property
    def chosen(self) -> Point:
        """The point of the model in ``final.pt`` (the last report unless the run selected another)."""
        if self.chosen_update is not None:
            for p in self.points:
                if p.update == self.chosen_update:
                    return p
        return self.final

    @property
    def chosen_dev_wer(self) -> float | None:
        return self.chosen.dev_wer if self.chosen_update is not None else self.final_dev_wer

    @property
    def best_dev_obj(self) -> float:
        vals = [p.dev_obj for p in self.points if not math.isnan(p.dev_obj)]
        return min(vals) if vals else math.nan

    @property
    def final_dev_wer(self) -> float | None:
        wers = [p.dev_wer for p in self.points if p.dev_wer is not None]
        return wers[-1] if wers else None


def _number(value, path: Path, lineno: int, key: str, kind: type) -> float | int:
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{path}:{lineno}: '{key}' must be an integer >= 0, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{path}:{lineno}: '{key}' must be a number, got {value!r}")
    return float(value)


def read_history(exp_dir: str | Path) -> Run:
    """Read ``EXP_DIR/history.jsonl`` (and ``decode_test/wer.txt`` if present) into a :class:`Run`.

    Raises :class:`DataError` naming the file (and line) for a missing or empty file, a line
    that is not a JSON object, a missing or mistyped required key, a negative update, a
    non-finite ``wall_s``, or a second ``run`` label in the same file. A torn last line (no
    newline: a run killed while appending it) is skipped with a warning.
    """
    exp_dir = Path(exp_dir)
    path = exp_dir / "history.jsonl"
    if not path.is_file():
        raise DataError(f"history file not found: {path}")
    run: Run | None = None
    by_update: dict[int, Point] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not text.endswith("\n"):
                # a torn last line (the run was killed while appending it): not a record yet
                log.warning("%s:%d: ignoring an incomplete last line", path, lineno)
                continue
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        for key, kind in REQUIRED.items():
            if rec.get(key) is None:
                raise DataError(f"{path}:{lineno}: missing key '{key}'")
            if kind is str and not isinstance(rec[key], str):
                raise DataError(f"{path}:{lineno}: '{key}' must be a string, got {rec[key]!r}")
        vals = {k: _number(rec[k], path, lineno, k, kind) for k, kind in REQUIRED.items() if kind is not str}
        if not math.isfinite(vals["wall_s"]):
            raise DataError(f"{path}:{lineno}: 'wall_s' must be finite, got {rec['wall_s']!r}")
        opt = {k: None if rec.get(k) is None else _number(rec[k], path, lineno, k, float) for k in OPTIONAL}
        if run is None:
            run = Run(run=rec["run"], optimizer=rec["optimizer"], criterion=rec["criterion"], exp_dir=exp_dir)
        elif rec["run"] != run.run:
            raise DataError(f"{path}:{lineno}: run '{rec['run']}' differs from '{run.run}' of the earlier "
                            "lines (one run per history file)")
        by_update[vals["update"]] = Point(**vals, **opt)
    if run is None:
        raise DataError(f"{path}: no records")
    run.points = [by_update[u] for u in sorted(by_update)]
    run.acoustic_scale = _acoustic_scale(exp_dir / "config.yaml")
    init = exp_dir / "init.txt"
    if run.criterion == "ctc" and init.is_file():
        # fine-tuned from another run's model (hfasr train --criterion ctc --init): its time counts
        init_dir = Path(init.read_text(encoding="utf-8").strip()).parent
        if (init_dir / "history.jsonl").is_file():
            run.init_dir, run.init_seconds = init_dir, read_history(init_dir).final.wall_s
            for p in run.points:
                p.wall_s += run.init_seconds
        else:
            log.warning("%s names %s, which has no history.jsonl: wall times exclude its training", init, init_dir)
    run.chosen_update = _chosen_update(exp_dir / "final.pt", run.final.update)
    wer = exp_dir / "decode_test" / "wer.txt"
    if wer.is_file():
        run.test_wer = parse_wer(wer)
        if not run.test_wer:
            raise DataError(f"{wer}: no Kaldi '%WER x.xx [ e / n, i ins, d del, s sub ]' line")
    return run


def _chosen_update(final: Path, last: int) -> int | None:
    """The ``update`` recorded in a run's ``final.pt`` when it differs from ``last`` (None when
    it is the last report, or the file is absent or unreadable)."""
    if not final.is_file():
        return None
    import pickle

    import torch

    try:
        update = torch.load(final, map_location="cpu", weights_only=True).get("update")
    except (OSError, RuntimeError, ValueError, EOFError, AttributeError, pickle.UnpicklingError):
        return None  # an old or foreign final.pt: the report still works, from the last report
    return int(update) if isinstance(update, int) and update != last else None


def _acoustic_scale(config: Path) -> float | None:
    """``sequence.acoustic_scale`` of a run's resolved ``config.yaml`` (None if absent)."""
    if not config.is_file():
        return None
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{config}: malformed YAML: {e}") from e
    seq = cfg.get("sequence") if isinstance(cfg, dict) else None
    value = seq.get("acoustic_scale") if isinstance(seq, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def comparable(a: Run, b: Run) -> bool:
    """Same criterion and (sequence criteria) the same acoustic scale."""
    return a.criterion == b.criterion and a.acoustic_scale == b.acoustic_scale


def time_to_target(run: Run, target: float, skip_initial: bool = False) -> Point | None:
    """The first point (in update order) with ``dev_obj <= target``, or None if never reached;
    ``skip_initial``: not the initial report (update 0)."""
    for p in run.points:
        if p.dev_obj <= target and not (skip_initial and p.update == 0):
            return p
    return None


def started_from(run: Run, other: Run) -> bool:
    """Whether ``run`` was fine-tuned from ``other``'s model (``init.txt`` names other's dir): its
    initial report is then ``other``'s model re-measured, not progress of its own."""
    return run.init_dir is not None and Path(run.init_dir).resolve() == Path(other.exp_dir).resolve()


@dataclass
class Comparison:
    """How fast ``run`` reaches ``other``'s final dev objective, against ``other`` itself."""

    run: str
    other: str
    target: float  # other's final dev objective
    run_time: float | None  # first wall_s where run's dev_obj <= target (None: not reached)
    run_update: int | None
    other_time: float  # first wall_s where other's dev_obj <= target (<= its final wall_s)
    other_chosen: int | None = None  # other's selected update when the target is not its last report's

    @property
    def ratio(self) -> float | None:
        """``other_time / run_time``: how many times less wall time ``run`` needs (None if not reached)."""
        if self.run_time is None:
            return None
        return math.inf if self.run_time == 0 else self.other_time / self.run_time

    def line(self) -> str:
        which = "final" if self.other_chosen is None else f"chosen (update {self.other_chosen})"
        head = f"time for {self.run} to reach {self.other}'s {which} dev objective ({self.target:.4f}):"
        if self.run_time is None:
            return f"{head} not reached ({self.other} reaches it at {self.other_time:.0f} s)"
        if self.run_time == 0:
            return f"{head} its initial model is already there (update 0); no ratio"
        if self.other_time == 0:
            return (f"{head} {self.run_time:.0f} s (update {self.run_update}); {self.other}'s initial model is "
                    "already there; no ratio")
        return (f"{head} {self.run_time:.0f} s (update {self.run_update}); {self.other} first reaches it at "
                f"{self.other_time:.0f} s; ratio {self.other}/{self.run} = {self.ratio:.2f}x")


def compare(run: Run, other: Run) -> Comparison:
    """Time for ``run`` to reach ``other``'s final dev objective, and ``other``'s own time to it."""
    target = other.chosen.dev_obj
    hit = time_to_target(run, target, skip_initial=started_from(run, other))
    own = time_to_target(other, target)
    return Comparison(run=run.run, other=other.run, target=target, run_time=None if hit is None else hit.wall_s,
                      run_update=None if hit is None else hit.update,
                      other_time=own.wall_s if own is not None else other.final.wall_s,
                      other_chosen=other.chosen_update)


def comparisons(runs: list[Run]) -> list[Comparison]:
    """Every ordered pair of distinct runs with comparable objectives (:func:`comparable`: the
    same criterion at the same acoustic scale)."""
    return [compare(a, b) for a in runs for b in runs if a is not b and comparable(a, b)]


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(runs: list[Run]) -> str:
    """The report as markdown: the per-run table and the time-to-target lines."""
    chose = any(r.chosen_update is not None for r in runs)
    what = "chosen" if chose else "final"
    header = (f"| run | optimizer | criterion | updates |{' chosen update |' if chose else ''} wall s | {what} dev obj "
              f"| best dev obj | {what} dev %WER | test %WER [95% CI] |")
    lines = [header, "|---|---|---|---:|" + ("---:|" if chose else "") + "---:|---:|---:|---:|---|"]
    for r in runs:
        test = "-"
        if r.test_wer:
            ci = r.test_wer["ci"]
            test = f"{r.test_wer['wer']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        crit = r.criterion + (f" (κ {r.acoustic_scale:g})" if r.acoustic_scale is not None else "")
        sel = f" {r.chosen.update} |" if chose else ""
        lines.append(f"| {r.run} | {r.optimizer} | {crit} | {r.final.update} |{sel} {r.final.wall_s:.0f} "
                     f"| {_fmt(r.chosen.dev_obj)} | {_fmt(r.best_dev_obj)} | {_fmt(r.chosen_dev_wer, '.2f')} | {test} |")
    inits = [r for r in runs if r.init_dir is not None]
    if inits:
        lines += [""] + [f"- {r.run}: fine-tuned from {r.init_dir}; its wall times include that run's "
                         f"{r.init_seconds:.0f} s" for r in inits]
    comps = comparisons(runs)
    if comps:
        lines += ["", ("Time to reach another run's final (or, with `select`, chosen) dev objective (first wall time with dev objective "
                       "<= target; ratio = the other run's own first time to that objective / this run's):"), ""]
        lines += [f"- {c.line()}" for c in comps]
    apart = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1:]
             if a.criterion == b.criterion and a.acoustic_scale != b.acoustic_scale]
    if apart:
        lines += [""] + [f"- {a.run} and {b.run}: {a.criterion} objectives at acoustic scales "
                         f"{_fmt(a.acoustic_scale, 'g')} and {_fmt(b.acoustic_scale, 'g')} are not comparable "
                         "(no time-to-objective ratio)" for a, b in apart]
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: str | Path) -> None:
    """PNG: the dev objective (one row per criterion: objectives of different criteria are not
    comparable) and the dev WER (all runs), against update and against wall time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    criteria = list(dict.fromkeys(r.criterion for r in runs))
    rows = [("dev_obj", f"{c} dev objective (lower is better)", c) for c in criteria] + [("dev_wer", "dev %WER", None)]
    fig = Figure(figsize=(11, 4 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for row, (key, ylabel, criterion) in enumerate(rows):
        for col, (xkey, xlabel) in enumerate([("update", "update (HF update / first-order report)"),
                                              ("wall_s", "wall time (s)")]):
            ax = axes[row][col]
            drawn = False
            for r in runs:
                if criterion is not None and r.criterion != criterion:
                    continue
                pts = [p for p in r.points if getattr(p, key) is not None]
                if pts:
                    ax.plot([getattr(p, xkey) for p in pts], [getattr(p, key) for p in pts], marker="o",
                            markersize=3, label=f"{r.run} ({r.optimizer}, {r.criterion})")
                    drawn = True
            if xkey == "update":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "no dev WER recorded", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(str(path), dpi=100, format="png")  # format: path may be a temporary name


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp_dirs", nargs="+", type=Path, metavar="EXP_DIR",
                   help="training experiment dirs (hfasr train --out), each with history.jsonl")
    p.add_argument("--out", required=True, type=Path, metavar="OUT_PREFIX",
                   help="writes OUT_PREFIX.png and OUT_PREFIX.md")


def run(args: argparse.Namespace) -> None:
    runs = [read_history(d) for d in args.exp_dirs]
    seen: dict[str, int] = {}
    for r in runs:  # make labels unique: the same label in two dirs gets the dir appended
        seen[r.run] = seen.get(r.run, 0) + 1
    for r in runs:
        if seen[r.run] > 1:
            r.run = f"{r.run} ({r.exp_dir})"
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(runs)
    write_text(f"{out}.md", text)
    with atomic_path(f"{out}.png") as tmp:
        plot(runs, tmp)
    print(text, end="")
