"""Plot of bench/results/ctc_mdlstm_deep.md: dev CTC loss and dev greedy WER against training wall
time for the histories in bench/results/ctc_mdlstm_deep_hist/ (an Adam -> HF run is drawn from
the end of the Adam run it started from).

    python bench/plot_deep_mdlstm.py bench/results/ctc_mdlstm_deep.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HIST = Path(__file__).resolve().parent / "results" / "ctc_mdlstm_deep_hist"
RUNS = [  # (file, label, wall-time offset: the Adam run an Adam -> HF run starts from)
    ("adam5_continued", "5-level Adam (40 epochs, resumed to 71)", None),
    ("hf5", "5-level HF, held-out rho/LS", None),
    ("hf5t", "5-level HF, rho/LS on gradient data", None),
    ("hf5b", "5-level HF, + per-block damping", None),
    ("adam40_hf", "5-level Adam 40 epochs -> HF", "adam5"),
    ("adam1", "1-level Adam (reference)", None),
]


def main(out: str) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, label, start in RUNS:
        h = [json.loads(x) for x in (HIST / f"{name}.jsonl").read_text().splitlines() if x.strip()]
        t0 = 0.0
        if start:
            t0 = [json.loads(x) for x in (HIST / f"{start}.jsonl").read_text().splitlines() if x.strip()][-1]["wall_s"]
        t = [t0 + r["wall_s"] for r in h]
        ax[0].plot(t, [r["dev_obj"] for r in h], marker=".", label=label)
        ax[1].plot(t, [r["dev_wer"] for r in h], marker=".", label=label)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("dev CTC loss per output frame")
    ax[1].set_ylabel("dev greedy WER (%)")
    for a in ax:
        a.set_xlabel("training wall time (s)")
        a.grid(True, alpha=0.3)
    ax[0].legend(fontsize=7)
    fig.suptitle("yesno, 5-level CTC MDLSTM, 1 thread on a shared 2-core CPU")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1])
