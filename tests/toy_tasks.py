"""Tiny synthetic tasks (frame CE, sequence sMBR, CTC) for the experiment-driver tests."""

from __future__ import annotations

import torch
from torch import nn

K, F = 5, 3


def frame_task(exp):
    """Frame CE, DNN with HF, on random utterances (float64)."""
    from hfasr.data.frames import FrameData
    from hfasr.train.ce import CETask

    g = torch.Generator().manual_seed(3)
    cuts = [f"u{i}" for i in range(12)]
    targets = [torch.randint(0, K, (6 + i % 5,), generator=g) for i in range(12)]
    feats = [torch.randn(len(y), F, generator=g) + nn.functional.one_hot(y, K)[:, :F] for y in targets]
    train, dev = FrameData(cuts, feats, targets, K), FrameData(cuts[:4], feats[:4], targets[:4], K)
    for d in (train, dev):
        d.feats = d.feats.double()
    task = CETask(exp.cfg, train, dev, exp.device)
    task.net.double()
    return task


def seq_task(exp):
    """HF-sMBR of a tiny DNN on random lattices (float64)."""
    from lattice_utils import random_seq_data

    from hfasr.models import build_model
    from hfasr.train.sequence import SequenceTask

    torch.manual_seed(0)
    model = build_model({"arch": "dnn", "input_dim": F, "num_outputs": K, "hidden_dim": 8, "num_layers": 1,
                         "context": 1}).double()
    meta = {"tid2phone": torch.arange(K + 3), "silence_phones": []}
    train = random_seq_data(20, 1, K, F, t_span=5, dtype=torch.float64)
    dev = random_seq_data(4, 2, K, F, t_span=5, dtype=torch.float64)
    task = SequenceTask(exp.cfg, model, torch.full((K,), -1.6, dtype=torch.float64), meta, train, dev, exp.device,
                        progress=False)
    task.prior_path, task.init = None, "random"
    task.write_files = lambda out: None
    return task


def ctc_task(exp):
    """HF CTC of a tiny BLSTM with structural damping (float64)."""
    from hfasr.criteria.ctc import TokenTable
    from hfasr.data.utterances import UtteranceSet
    from hfasr.train.ctc import CtcTask

    g = torch.Generator().manual_seed(5)
    table = TokenTable(["a", "b", "c"], "char", word_boundary=None)
    texts = ["ab", "ba", "abc", "cab", "ca", "bc", "a", "cb", "acb", "bca"]
    targets = [torch.tensor(table.encode(t)) for t in texts]
    feats = [torch.randn(6 + 2 * len(t) + i % 3, F, generator=g, dtype=torch.float64) for i, t in enumerate(texts)]
    data = UtteranceSet([f"u{i}" for i in range(len(texts))], feats, targets, texts)
    task = CtcTask(exp.cfg, table, data, data.subset([0, 1, 2]), exp.device)
    task.net.double()
    return task


def toy_config(kind: str, optimizer: str = "hf"):
    """The config of toy task ``kind``: 2 HF updates, or 2 first-order epochs."""
    from hfasr.config import from_dict
    from hfasr.train.ce import TrainConfig
    from hfasr.train.ctc import CtcTrainConfig
    from hfasr.train.sequence import SeqTrainConfig

    hf = {"updates": 2, "heldout_fraction": 0.25, "curvature_fraction": 0.5, "curvature_min": 2,
          "optimizer": {"cg_max_iters": 10, "rho_data": "heldout", "backtrack_data": "heldout",
                        "linesearch_data": "heldout"}}
    if kind == "frame":
        return from_dict(TrainConfig, {"optimizer": optimizer, "chunk_size": 16, "epochs": 2, "prior_floor": 1e-3,
                                       "dnn": {"hidden_dim": 8, "num_layers": 1, "context": 1},
                                       "hf": {**hf, "curvature_min": 8}})
    if kind == "sequence":
        return from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": optimizer, "dev_wer": False, "max_frames": 40,
                                          "sequence": {"acoustic_scale": 0.5, "one_silence_class": False}, "hf": hf})
    if kind == "sequence-subsets":  # successive subsets with every reuse on (dynamic SAG, warm start, damping)
        return from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": optimizer, "dev_wer": False, "max_frames": 40,
                                          "sequence": {"acoustic_scale": 0.5, "one_silence_class": False},
                                          "hf": {**hf, "num_subsets": 2,
                                                 "optimizer": {**hf["optimizer"], "gradient_reuse": "dynamic"}}})
    return from_dict(CtcTrainConfig, {"units": "char", "model": "blstm", "optimizer": optimizer, "max_frames": 40,
                                      "blstm": {"hidden_size": 4, "num_layers": 1},
                                      "hf": {**hf, "optimizer": {**hf["optimizer"], "structural_damping": 0.3}}})


TASKS = {"frame": frame_task, "sequence": seq_task, "sequence-subsets": seq_task, "ctc": ctc_task}



def run_toy(cfg, kind: str, out_dir, resume: bool = False):
    """Train the toy task ``kind`` with ``cfg`` in ``out_dir``: (experiment, task, driver)."""
    from hfasr.train.experiment import Experiment

    exp = Experiment(cfg, out_dir, resume=resume, progress=False)
    task = TASKS[kind](exp)
    driver = exp.run(task)
    exp.save_final(task)
    return exp, task, driver
