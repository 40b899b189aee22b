"""Lattice generation (decoder lattice -> Lattice) and the sequence trainer (HF and SGD)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from lattice_utils import random_seq_data
from test_decode import YES_NO, crafted
from yesno_graph import build_yesno_graph

from hfasr.config import from_dict
from hfasr.decode.decoder import decode_lattice, lattice_to_tensors
from hfasr.errors import ConfigError, HfasrError
from hfasr.lattice import LatticeBatch
from hfasr.lattice.generate import tensors_to_lattice
from hfasr.models import build_model
from hfasr.train.sequence import SeqTrainConfig, SequenceTrainer

K, F = 5, 3


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return build_yesno_graph(tmp_path_factory.mktemp("yesno_graph"))


def _viterbi(lat, ll, kappa):
    """Best path log-score of a Lattice with arc score κ·ll[t, pdf] − graph_cost."""
    best = torch.full((lat.num_states,), float("-inf"), dtype=torch.float64)
    best[0] = 0.0
    for a in range(lat.num_arcs):  # arcs sorted by (topologically numbered) source
        s, d, p = int(lat.src[a]), int(lat.dst[a]), int(lat.pdf[a])
        w = -float(lat.graph_cost[a]) + (kappa * float(ll[int(lat.frame[a]), p]) if p >= 0 else 0.0)
        best[d] = max(best[d], best[s] + w)
    return float((best - lat.final_cost).max())


@pytest.mark.parametrize("bias", [8.0, 0.5])
def test_lattice_conversion_keeps_the_decoders_best_path(graph, bias):
    """tensors_to_lattice: pdfs / frames per arc, validates, and rescoring it with the same
    log-likelihoods gives back the decoder's best-path score; posteriors sum to one per frame."""
    kappa = 0.5
    ll, _ = crafted(graph, YES_NO, seed=5, bias=bias)
    res = decode_lattice(graph.hclg, graph.tid2pdf, ll, kappa)
    lat = tensors_to_lattice(lattice_to_tensors(res.lattice), torch.as_tensor(graph.tid2pdf))
    lat.validate("yesno")
    assert lat.num_frames == ll.shape[0]
    emit = lat.pdf >= 0
    assert bool((lat.pdf[emit] == torch.as_tensor(graph.tid2pdf)[lat.tid[emit]]).all())
    assert bool((lat.tid[~emit] == 0).all())
    assert _viterbi(lat, ll.double(), kappa) == pytest.approx(-res.best.total_cost, rel=1e-5, abs=1e-3)
    lb = LatticeBatch([lat])
    w = lb.arc_scores(ll.double()[None], kappa, 1.0)
    _, _, logz, post = lb.forward_backward(w)
    assert float(logz[0]) >= -res.best.total_cost - 1e-3
    gamma = lb.scatter_frames(post, (1, ll.shape[0], ll.shape[1]))
    assert torch.allclose(gamma.sum(-1), torch.ones(1, ll.shape[0], dtype=torch.float64), atol=1e-9)


def _data(n, seed):
    return random_seq_data(n, seed, K, F, t_span=4)


def _trainer(tmp_path, opt, **over):
    torch.manual_seed(0)
    model = build_model({"arch": "dnn", "input_dim": F, "num_outputs": K, "hidden_dim": 8, "num_layers": 1,
                         "context": 1})
    cfg = from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": opt, "dev_wer": False,
                                     "sequence": {"acoustic_scale": 0.5, "one_silence_class": False},
                                     "hf": {"updates": 3, "heldout_fraction": 0.25, "curvature_fraction": 0.5,
                                            "curvature_min_utts": 2, "optimizer": {"cg_max_iters": 10}},
                                     "sgd": {"lr": 0.05, "epochs": 2, "reports_per_epoch": 2}, **over})
    meta = {"tid2phone": torch.arange(K + 3), "silence_phones": []}
    tmp_path.mkdir(parents=True, exist_ok=True)
    return SequenceTrainer(cfg, model, torch.full((K,), -1.6), meta, _data(12, 1), _data(4, 2), tmp_path,
                           progress=False)


@pytest.mark.parametrize("opt", ["hf", "sgd"])
def test_sequence_training_lowers_dev_objective_and_resumes_exactly(tmp_path, opt):
    t = _trainer(tmp_path / "full", opt)
    t.fit()
    hist = [json.loads(x) for x in (tmp_path / "full/history.jsonl").read_text().splitlines()]
    assert [h["update"] for h in hist] == list(range(len(hist)))
    assert len(hist) == (4 if opt == "hf" else 5)
    assert hist[-1]["dev_obj"] < hist[0]["dev_obj"]  # -expected state accuracy went down
    assert all(h["run"] == f"{opt}-smbr" and h["wall_s"] >= 0 for h in hist)
    final = [p.detach().clone() for p in t.model.parameters()]

    # stop after two reports, then resume from the checkpoint in a fresh trainer
    part = _trainer(tmp_path / "part", opt)
    if opt == "hf":
        part.cfg.hf.updates = 2
    else:
        part.cfg.sgd.epochs = 1
    part.fit()
    part.cfg = _trainer(tmp_path / "tmp", opt).cfg  # the full config again
    again = _trainer(tmp_path / "part", opt)
    with pytest.raises(ConfigError, match="different config"):
        again.cfg.sequence.acoustic_scale = 0.3
        again.load_checkpoint(tmp_path / "part/checkpoint.pt")
    again = _trainer(tmp_path / "part", opt)
    again.load_checkpoint(tmp_path / "part/checkpoint.pt")
    again.fit()
    for a, b in zip(final, again.model.parameters()):
        assert torch.equal(a, b.detach())
    lines = (tmp_path / "part/history.jsonl").read_text().splitlines()
    assert [json.loads(x)["dev_obj"] for x in lines] == [h["dev_obj"] for h in hist]


def test_subset_hf_with_gradient_reuse_resumes_exactly(tmp_path):
    """HF on 3 successive subsets with SAG reuse: lowers the dev objective; resume is exact
    (the stored subset gradients are in the checkpoint)."""
    over = {"hf": {"updates": 4, "heldout_fraction": 0.25, "curvature_fraction": 0.5, "curvature_min_utts": 2,
                   "num_subsets": 3, "optimizer": {"cg_max_iters": 10, "gradient_reuse": "sag"}}}
    t = _trainer(tmp_path / "full", "hf", **over)
    t.fit()
    assert t.history[-1]["dev_obj"] < t.history[0]["dev_obj"]
    part = _trainer(tmp_path / "part", "hf", **over)
    part.cfg.hf.updates = 2
    part.fit()
    again = _trainer(tmp_path / "part", "hf", **over)
    again.load_checkpoint(tmp_path / "part/checkpoint.pt")
    again.fit()
    for a, b in zip(t.model.parameters(), again.model.parameters()):
        assert torch.equal(a.detach(), b.detach())


def test_sequence_config_errors():
    with pytest.raises(ConfigError, match="criterion"):
        from_dict(SeqTrainConfig, {"criterion": "ctc"})
    with pytest.raises(ConfigError, match="optimizer"):
        from_dict(SeqTrainConfig, {"optimizer": "adam"})
    with pytest.raises(ConfigError, match="unknown key 'dampin'"):
        from_dict(SeqTrainConfig, {"hf": {"optimizer": {"dampin": 1.0}}})
    # a partial hf.optimizer section keeps the sequence-training defaults (held-out rho)
    cfg = from_dict(SeqTrainConfig, {"hf": {"optimizer": {"cg_max_iters": 7}}})
    assert cfg.hf.optimizer.cg_max_iters == 7 and cfg.hf.optimizer.rho_data == "heldout"
    assert cfg.sequence.criterion == "smbr"


def test_train_cli_sequence_needs_init_and_lattices(tmp_path):
    from hfasr.bin import train

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    args = p.parse_args(["--data-dir", str(tmp_path), "--task", "x", "--ali-dir", str(tmp_path), "--out",
                         str(tmp_path / "o"), "--criterion", "mmi"])
    with pytest.raises(HfasrError, match="--init"):
        train.run(args)


@pytest.mark.parametrize("arch", ["blstm", "mdlstm"])
def test_recurrent_hybrid_models_take_the_sequence_hf_path(tmp_path, arch):
    """A BLSTM / MDLSTM with a pdf softmax output (no time subsampling) is sequence-trained by
    the same HF code as the DNN: the criteria and the optimizer see only logits, and G v uses the
    model's hand-written J v (ModelGaussNewton)."""
    from hfasr.optim import ModelGaussNewton, SumGaussNewton

    torch.manual_seed(0)
    model = build_model({"arch": "blstm", "input_dim": F, "num_outputs": K, "hidden_size": 6, "num_layers": 1}
                        if arch == "blstm" else
                        {"arch": "mdlstm", "input_dim": F, "num_outputs": K, "hidden_sizes": [2, 3], "ff_sizes": [4]})
    assert model(torch.randn(2, 7, F), torch.tensor([7, 5])).shape == (2, 7, K)  # one output per frame
    cfg = from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": "hf", "dev_wer": False,
                                     "sequence": {"acoustic_scale": 0.5, "one_silence_class": False},
                                     "hf": {"updates": 2, "heldout_fraction": 0.25, "curvature_fraction": 0.5,
                                            "curvature_min_utts": 2, "optimizer": {"cg_max_iters": 10}}})
    meta = {"tid2phone": torch.arange(K + 3), "silence_phones": []}
    t = SequenceTrainer(cfg, model, torch.full((K,), -1.6), meta, _data(12, 1), _data(4, 2), tmp_path, progress=False)
    gn = t.objective.curvature(torch.Generator().manual_seed(0))
    parts = gn.parts if isinstance(gn, SumGaussNewton) else [gn]
    assert all(isinstance(p, ModelGaussNewton) for p in parts)
    t.fit()
    hist = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(hist) == 3 and hist[-1]["dev_obj"] < hist[0]["dev_obj"]
