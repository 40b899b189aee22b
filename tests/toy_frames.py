"""Test helper: a tiny synthetic frame corpus for the CE / HF training tests.

Lhotse cuts with numpy features and pdf labels in runs whose features are the label's mean plus
noise stand in for fbank + GMM alignments. ``tests/conftest.py`` builds it as the ``corpus``
fixture; the training tests import the constants and helpers from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, Features, MonoCut, NumpyFilesWriter

from hfasr.data.features import save_stats
from hfasr.data.frames import FrameData

TASK = "toy"
F = 6
NUM_PDFS = 5  # pdf 4 never occurs: its prior is floored
SEEN = 4
SMALL = {"dnn": {"hidden_dim": 32, "num_layers": 2, "context": 2}, "batch_size": 32, "num_threads": 1}


def make_split(root: Path, split: str, n: int, means: torch.Tensor, g: torch.Generator) -> dict:
    writer = NumpyFilesWriter(root / "feats" / split)
    cuts, ids, pdfs = [], [], []
    for u in range(n):
        T = int(torch.randint(25, 45, (1,), generator=g))
        labels = []
        while len(labels) < T:
            labels += [int(torch.randint(0, SEEN, (1,), generator=g))] * int(torch.randint(3, 9, (1,), generator=g))
        y = torch.tensor(labels[:T])
        x = means[y] + 1.2 * torch.randn(T, F, generator=g) + 5.0  # offset: CMVN matters
        cid = f"{split}-{u:03d}"
        key = writer.write(cid, x.numpy().astype(np.float32))
        feats = Features(type="fbank", num_frames=T, num_features=F, frame_shift=0.01, sampling_rate=16000,
                         start=0, duration=T * 0.01, storage_type=writer.name,
                         storage_path=str(writer.storage_path), storage_key=key)
        cuts.append(MonoCut(id=cid, start=0, duration=T * 0.01, channel=0, features=feats))
        ids.append(cid)
        pdfs.append(y.int())
    CutSet.from_cuts(cuts).to_file(root / f"{TASK}_feats_{split}.jsonl.gz")
    return {"cut_ids": ids, "tids": [p + 1 for p in pdfs], "pdfs": pdfs, "phones": [p // 2 + 1 for p in pdfs],
            "num_pdfs": NUM_PDFS}


def write_ali(ali_dir: Path, split: str, ali: dict) -> None:
    ali_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ali, ali_dir / f"ali_{split}.pt")


def build_toy_corpus(root: Path) -> tuple[Path, dict]:
    """24 train / 6 dev utterances, their alignments in ``root/gmm`` and the CMVN stats."""
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(SEEN, F, generator=g)
    alis = {"train": make_split(root, "train", 24, means, g), "dev": make_split(root, "dev", 6, means, g)}
    for split, ali in alis.items():
        write_ali(root / "gmm", split, ali)
    train = FrameData.load(root, TASK, "train", root / "gmm")
    save_stats(root / f"{TASK}_stats.pt", train.feats.mean(0), train.feats.std(0))
    return root, alis


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Killed(Exception):
    """Raised by :func:`kill_at_batch` in place of a SIGKILL."""


def kill_at_batch(monkeypatch, cls, batch_size: int, epoch: int, batch: int):
    """Make ``cls.batch`` (a FrameRows class) raise :class:`Killed` at minibatch ``batch`` of
    ``epoch`` (1-based; a process killed mid-epoch). Returns a function that undoes it."""
    orig, calls = cls.batch, {"n": 0}

    def killing(self, indices):
        calls["n"] += 1
        if calls["n"] == (epoch - 1) * len(self.shuffled(torch.Generator(), batch_size)) + batch:
            raise Killed
        return orig(self, indices)

    monkeypatch.setattr(cls, "batch", killing)
    return lambda: monkeypatch.setattr(cls, "batch", orig)
