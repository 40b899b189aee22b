"""Lattice generation (decoder lattice -> Lattice) and sequence training (SequenceTask run by the
experiment driver with HF or SGD)."""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time

import numpy as np
import pytest
import torch
from lattice_utils import random_seq_data
from yesno_graph import TOPO, YES_NO, crafted

from hfasr.config import from_dict
from hfasr.decode.decoder import decode_lattice, lattice_to_tensors
from hfasr.errors import ConfigError, HfasrError
from hfasr.gmm.model import GmmModel
from hfasr.lattice import LatticeBatch
from hfasr.lattice.generate import tensors_to_lattice
from hfasr.models import build_model
from hfasr.train.ce import save_prior
from hfasr.train.experiment import Experiment
from hfasr.train.sequence import SeqTrainConfig, SequenceTask

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)

K, F = 5, 3


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


@pytest.fixture
def prior(tmp_path):
    """The init model's ``prior.pt`` (copied into the experiment dir by the task)."""
    path = tmp_path / "init" / "prior.pt"
    save_prior(path, torch.full((K,), -1.6))
    return path


def _cfg(opt, **over):
    """The toy config; ``over`` replaces top-level keys / whole sections."""
    return from_dict(SeqTrainConfig, {"criterion": "smbr", "optimizer": opt, "dev_wer": False,
                                      "sequence": {"acoustic_scale": 0.5, "one_silence_class": False},
                                      "hf": {"updates": 3, "heldout_fraction": 0.25, "curvature_fraction": 0.5,
                                             "curvature_min": 2, "optimizer": {"cg_max_iters": 10}},
                                      "sgd": {"lr": 0.05, "epochs": 2, "reports_per_epoch": 2}, **over})


def _task(exp, prior, model=None):
    """sMBR of a tiny DNN (or ``model``) on 12 random training and 4 dev lattices."""
    torch.manual_seed(0)
    if model is None:
        model = build_model({"arch": "dnn", "input_dim": F, "num_outputs": K, "hidden_dim": 8, "num_layers": 1,
                             "context": 1})
    meta = {"tid2phone": torch.arange(K + 3), "silence_phones": []}
    task = SequenceTask(exp.cfg, model, torch.full((K,), -1.6), meta, _data(12, 1), _data(4, 2), exp.device,
                        progress=False)
    task.prior_path, task.init = prior, prior.parent / "final.pt"
    return task


def _train(cfg, out, build, resume=False, max_wall=None):
    """One experiment in ``out`` on the task ``build(exp)``: (experiment, task, driver, seconds
    exp.run took)."""
    exp = Experiment(cfg, out, resume=resume, progress=False)
    task = build(exp)
    t0 = time.perf_counter()
    driver = exp.run(task, max_wall=max_wall)
    elapsed = time.perf_counter() - t0
    exp.save_final(task)
    return exp, task, driver, elapsed


def _history(out):
    return [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]


def _strip(hist):
    """The records without their wall time (the one field a resumed run may not reproduce)."""
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in hist]


def _same_params(a, b):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("opt", ["hf", "sgd"])
def test_sequence_training_lowers_dev_objective_and_resumes_exactly(tmp_path, prior, opt):
    build = functools.partial(_task, prior=prior)
    full = _cfg(opt)
    exp, task, driver, elapsed = _train(full, tmp_path / "full", build)
    hist = _history(tmp_path / "full")
    assert hist == exp.history
    assert [h["update"] for h in hist] == list(range(len(hist))) and driver.update == len(hist) - 1
    assert len(hist) == (4 if opt == "hf" else 5)
    if opt == "sgd":  # reports at the reports_per_epoch marks of 12 one-utterance minibatches
        assert [h["epoch"] for h in hist[1:]] == [0.5, 1.0, 1.5, 2.0]
        assert all(h["lr"] == 0.05 for h in hist[1:])
    else:
        assert all("damping" in h and "rho" in h for h in hist[1:])
    assert hist[-1]["dev_obj"] < hist[0]["dev_obj"]  # -expected state accuracy went down
    assert all(h["run"] == f"{opt}-smbr" and h["criterion"] == "smbr" and h["optimizer"] == opt for h in hist)
    assert "dev_wer" not in hist[-1]  # dev_wer: false
    # wall_s: training time so far; 0 at the initial report, growing with every update, and
    # (dev reports and checkpoints excluded) within the time exp.run() took
    walls = [h["wall_s"] for h in hist]
    assert walls[0] == 0.0 and all(a < b for a, b in itertools.pairwise(walls)), walls
    assert walls[-1] <= elapsed + 1e-3 and walls[-1] == round(exp.wall, 3)
    # train.log: one `report <run> update=N ...` line per record
    log = (tmp_path / "full/train.log").read_text().splitlines()
    assert [x.split()[:3] for x in log if x.startswith("report ")] == [
        ["report", f"{opt}-smbr", f"update={h['update']}"] for h in hist]
    # the experiment dir: the init model's prior, final.pt (the last report's model, naming the
    # init model) and a checkpoint loadable with weights_only
    assert torch.equal(torch.load(tmp_path / "full/prior.pt", weights_only=True)["log_prior"],
                       torch.full((K,), -1.6))
    fin = torch.load(tmp_path / "full/final.pt", weights_only=True)
    assert fin["init"] == str(prior.parent / "final.pt") and fin["dev_obj"] == hist[-1]["dev_obj"]
    assert all(torch.equal(v, task.net.state_dict()[k]) for k, v in fin["state_dict"].items())
    ck = torch.load(tmp_path / "full/checkpoint.pt", weights_only=True)
    assert set(ck) == {"model_config", "state_dict", "driver", "task", "history", "wall", "torch_rng", "config"}
    assert ck["history"] == hist and ck["wall"] == exp.wall
    assert ck["task"]["train_lattices"] is None  # no lattice regeneration: the lattices are not stored

    # stop after two reports (hf.updates / sgd.epochs may change on resume), then resume from
    # the checkpoint in a fresh experiment with the full config
    short = _cfg(opt)
    if opt == "hf":
        short.hf.updates = 2
    else:
        short.sgd.epochs = 1
    part, _, _, _ = _train(short, tmp_path / "part", build)
    assert _strip(part.history) == _strip(hist[:3])
    with pytest.raises(HfasrError, match="already holds a training run"):
        Experiment(full, tmp_path / "part", progress=False)
    bad = _cfg(opt)
    bad.sequence.acoustic_scale = 0.3
    with pytest.raises(ConfigError, match=r"different config \(sequence\.acoustic_scale: 0\.5 -> 0\.3\)"):
        _train(bad, tmp_path / "part", build, resume=True)
    again, again_task, again_driver, _ = _train(full, tmp_path / "part", build, resume=True)
    _same_params(task.net, again_task.net)
    assert again_driver.update == driver.update
    assert f"# resumed from {tmp_path / 'part/checkpoint.pt'} at update 2" in (tmp_path / "part/train.log").read_text()
    lines = _history(tmp_path / "part")
    assert [x["dev_obj"] for x in lines] == [h["dev_obj"] for h in hist]
    assert _strip(lines) == _strip(hist) and lines == again.history
    # the resumed run continues the checkpoint's training time (it does not restart at 0)
    walls = [x["wall_s"] for x in lines]
    assert walls[:3] == [h["wall_s"] for h in part.history]
    assert all(a < b for a, b in itertools.pairwise(walls)), walls
    assert walls[-1] == round(again.wall, 3)

    # stopped after the first report (for SGD in the middle of an epoch: the data order comes
    # from the generator state saved at the epoch's start) and resumed: the same run again
    mid, _, _, _ = _train(full, tmp_path / "mid", build, max_wall=1e-9)
    assert [h["update"] for h in mid.history] == [0, 1]
    assert mid.history[1].get("epoch") == (0.5 if opt == "sgd" else None)
    res, res_task, _, _ = _train(full, tmp_path / "mid", build, resume=True)
    _same_params(task.net, res_task.net)
    assert _strip(res.history) == _strip(hist)


@pytest.mark.parametrize("reuse", ["sag", "saga", "decay"])
def test_subset_hf_with_gradient_reuse_resumes_exactly(tmp_path, prior, reuse):
    """HF on 3 successive subsets with gradient reuse (SAG; SAGA and age-decayed weights, whose
    4th update revisits subset 0): lowers the dev objective; resume is exact (the stored subset
    gradients and their update indices are in the checkpoint)."""
    over = {"hf": {"updates": 4, "heldout_fraction": 0.25, "curvature_fraction": 0.5, "curvature_min": 2,
                   "num_subsets": 3, "optimizer": {"cg_max_iters": 10, "gradient_reuse": reuse}}}
    build = functools.partial(_task, prior=prior)
    exp, task, _, _ = _train(_cfg("hf", **over), tmp_path / "full", build)
    assert len(exp.history) == 5 and exp.history[-1]["dev_obj"] < exp.history[0]["dev_obj"]
    short = _cfg("hf", **over)
    short.hf.updates = 2
    _train(short, tmp_path / "part", build)
    again, again_task, _, _ = _train(_cfg("hf", **over), tmp_path / "part", build, resume=True)
    _same_params(task.net, again_task.net)
    assert _strip(again.history) == _strip(exp.history)


def test_hf_heldout_data_dev_uses_the_dev_set_for_rho(tmp_path, prior):
    """``hf.heldout_data: dev``: every training utterance feeds the gradient, and HF's held-out
    loss (ρ / backtracking / line search) is the dev objective itself."""
    over = {"hf": {"updates": 2, "heldout_data": "dev", "heldout_fraction": 0.0, "curvature_fraction": 0.5,
                   "curvature_min": 2, "optimizer": {"cg_max_iters": 10}}}
    build = functools.partial(_task, prior=prior)
    exp, task, driver, _ = _train(_cfg("hf", **over), tmp_path / "dev", build)
    assert len(driver.objective.data) == 12 and driver.objective.heldout is task.dev_data
    for rec in exp.history[1:]:
        assert rec["heldout_obj"] == pytest.approx(rec["dev_obj"], rel=1e-6)


def test_sequence_config_errors():
    with pytest.raises(ConfigError, match="criterion"):
        from_dict(SeqTrainConfig, {"criterion": "ctc"})
    with pytest.raises(ConfigError, match="optimizer"):
        from_dict(SeqTrainConfig, {"optimizer": "adam"})
    with pytest.raises(ConfigError, match="unknown key 'dampin'"):
        from_dict(SeqTrainConfig, {"hf": {"optimizer": {"dampin": 1.0}}})
    # the renamed keys: hf.curvature_min_utts is now hf.curvature_min, hf.max_frames top-level max_frames
    with pytest.raises(ConfigError, match="unknown key 'curvature_min_utts'"):
        from_dict(SeqTrainConfig, {"hf": {"curvature_min_utts": 2}})
    with pytest.raises(ConfigError, match="unknown key 'max_frames'"):
        from_dict(SeqTrainConfig, {"hf": {"max_frames": 100}})
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
def test_recurrent_hybrid_models_take_the_sequence_hf_path(tmp_path, prior, arch):
    """A BLSTM / MDLSTM with a pdf softmax output (no time subsampling) is sequence-trained by
    the same HF code as the DNN: the criteria and the optimizer see only logits, and G v uses the
    model's hand-written J v (ModelGaussNewton)."""
    from hfasr.optim import ModelGaussNewton, SumGaussNewton

    torch.manual_seed(0)
    model = build_model({"arch": "blstm", "input_dim": F, "num_outputs": K, "hidden_size": 6, "num_layers": 1}
                        if arch == "blstm" else
                        {"arch": "mdlstm", "input_dim": F, "num_outputs": K, "hidden_sizes": [2, 3], "ff_sizes": [4]})
    assert model(torch.randn(2, 7, F), torch.tensor([7, 5])).shape == (2, 7, K)  # one output per frame
    cfg = _cfg("hf")
    cfg.hf.updates = 2
    exp = Experiment(cfg, tmp_path / "run", progress=False)
    task = _task(exp, prior, model)
    assert task.model_name == arch
    gn = exp.make_driver(task).objective.curvature(torch.Generator().manual_seed(0))
    parts = gn.parts if isinstance(gn, SumGaussNewton) else [gn]
    assert all(isinstance(p, ModelGaussNewton) for p in parts)
    exp.run(task)
    hist = _history(tmp_path / "run")
    assert len(hist) == 3 and hist[-1]["dev_obj"] < hist[0]["dev_obj"]
    assert all(h["model"] == arch for h in hist)


# ------------------------------------------------------------------ lattice regeneration, dev WER

# yesno utterances (phone, frames) and their transcripts
_YESNO = {"YES NO": [("SIL", 6), ("Y", 8), ("SIL", 5), ("N", 9), ("SIL", 5)],
          "NO YES": [("SIL", 5), ("N", 8), ("SIL", 6), ("Y", 9), ("SIL", 4)],
          "YES": [("SIL", 6), ("Y", 10), ("SIL", 6)], "NO": [("SIL", 5), ("N", 9), ("SIL", 7)]}


def _yesno_data(graph, n, seed):
    """An ``UtteranceSet`` over the yesno graph: features are noisy pdf scores of the transcript's
    states, denominator lattices decoded from them (κ 0.5, lattice beam 2)."""
    from hfasr.criteria.sequence import SeqSupervision
    from hfasr.data.utterances import UtteranceSet

    pdf2phone = {p: graph.phones[ph] for ph in ("SIL", "N", "Y") for p in graph.pdfs_of_phone(ph)}
    ids, utts, texts = [], [], {}
    for i in range(n):
        text = list(_YESNO)[i % len(_YESNO)]
        ll, seq = crafted(graph, _YESNO[text], seed=100 * seed + i, bias=1.5)
        res = decode_lattice(graph.hclg, graph.tid2pdf, ll, 0.5, lattice_beam=2.0)
        lat = tensors_to_lattice(lattice_to_tensors(res.lattice), graph.tid2pdf)
        ids.append(f"y{seed}-{i}")
        texts[ids[-1]] = text
        utts.append((ll, SeqSupervision(lat, torch.tensor(seq), ref_phone=torch.tensor([pdf2phone[p] for p in seq]))))
    return UtteranceSet.from_pairs(ids, utts, [texts[c] for c in ids])


def _yesno_task(exp, graph, gmm_dir):
    """sMBR of a DNN (briefly CE-trained, so that it decodes sensibly) over the yesno graph,
    with the lattice meta data that regeneration needs (graph, tid2pdf, κ, beams)."""
    from hfasr.data.batching import pad_batch

    num_pdfs = graph.num_pdfs
    train, dev = _yesno_data(graph, 8, 1), _yesno_data(graph, 4, 2)
    torch.manual_seed(0)
    model = build_model({"arch": "dnn", "input_dim": num_pdfs, "num_outputs": num_pdfs, "hidden_dim": 16,
                         "num_layers": 1, "context": 1})
    x, lens = pad_batch([u[0] for u in train.utts])
    y = torch.nn.utils.rnn.pad_sequence([u[1].ref_pdf for u in train.utts], batch_first=True, padding_value=-100)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x, lens).transpose(1, 2), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tm = graph.tm
    meta = {"graph": str(graph.path), "tid2pdf": graph.tid2pdf, "acoustic_scale": 0.5, "lattice_beam": 2.0,
            "num_jobs": 1, "silence_phones": [graph.phones["SIL"]],
            "tid2phone": torch.tensor([0] + [tm.transition_id_to_phone(t)
                                             for t in range(1, tm.num_transition_ids + 1)])}
    task = SequenceTask(exp.cfg, model, torch.full((num_pdfs,), -math.log(num_pdfs)), meta, train, dev, exp.device,
                        graph.path.parent, gmm_dir, progress=False)
    task.prior_path, task.init = gmm_dir / "prior.pt", "ce"
    return task


def _lattices(task):
    return [sup.lattice.to_dict() for _, sup in task.train.utts]


def _lattice_equal(x, y):
    return x.keys() == y.keys() and all(
        torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) and isinstance(y[k], torch.Tensor) else x[k] == y[k]
        for k in x)


def _same_lattices(a, b):
    assert len(a) == len(b) and all(_lattice_equal(x, y) for x, y in zip(a, b))


def test_regenerated_lattices_and_dev_wer(tmp_path, graph):
    """regenerate_every 1 re-decodes the training lattices after every report but the last;
    the regenerated lattices are in the checkpoint (weights_only), and a run stopped after its
    first regeneration and resumed equals one that never stopped. dev_wer decodes the dev set
    over the graph at every report."""
    gmm_dir = tmp_path / "gmm"
    gmm_dir.mkdir()
    GmmModel.init_mono(TOPO, 1, np.zeros(1), np.ones(1)).write(gmm_dir / "final.mdl")  # the graph's transitions
    save_prior(gmm_dir / "prior.pt", torch.full((graph.num_pdfs,), -math.log(graph.num_pdfs)))
    cfg = _cfg("hf", regenerate_every=1, dev_wer=True, decode_acoustic_scale=0.5)

    def build(exp):
        return _yesno_task(exp, graph, gmm_dir)

    exp, task, _, _ = _train(cfg, tmp_path / "full", build)
    hist = exp.history
    assert len(hist) == 4
    log = (tmp_path / "full/train.log").read_text()
    assert log.count("# regenerated 8 of 8 training lattices with the current model") == 2
    # dev WER at every report, in the log line, and of the model that final.pt holds
    assert all(isinstance(h["dev_wer"], float) and 0 <= h["dev_wer"] <= 100 for h in hist)
    reports = [x for x in log.splitlines() if x.startswith("report ")]
    assert [x.split()[2] for x in reports if "dev_wer=" in x] == [f"update={h['update']}" for h in hist]
    assert task.evaluate()["dev_wer"] == hist[-1]["dev_wer"]
    assert torch.load(tmp_path / "full/final.pt", weights_only=True)["dev_wer"] == hist[-1]["dev_wer"]
    # the lattices changed, and the checkpoint holds the regenerated ones
    fresh = _yesno_task(exp, graph, gmm_dir)
    assert not any(_lattice_equal(a, b) for a, b in zip(_lattices(task), _lattices(fresh)))
    ck = torch.load(tmp_path / "full/checkpoint.pt", weights_only=True)
    _same_lattices(ck["task"]["train_lattices"], _lattices(task))

    # stopped after the first report (and its regeneration), resumed in a fresh experiment whose
    # task has the original lattices: the checkpoint's lattices are used, the run is the same
    mid, mid_task, _, _ = _train(cfg, tmp_path / "mid", build, max_wall=1e-9)
    assert [h["update"] for h in mid.history] == [0, 1]
    ck = torch.load(tmp_path / "mid/checkpoint.pt", weights_only=True)
    _same_lattices(ck["task"]["train_lattices"], _lattices(mid_task))
    res, res_task, _, _ = _train(cfg, tmp_path / "mid", build, resume=True)
    _same_params(task.net, res_task.net)
    assert _strip(res.history) == _strip(hist)
    _same_lattices(_lattices(res_task), _lattices(task))


def test_extending_a_finished_run_regenerates_the_due_lattices(tmp_path, graph):
    """A run that ended where a regeneration was due (skipped: the run was over), resumed with
    more updates, regenerates first and so equals a run that never stopped."""
    gmm_dir = tmp_path / "gmm"
    gmm_dir.mkdir()
    GmmModel.init_mono(TOPO, 1, np.zeros(1), np.ones(1)).write(gmm_dir / "final.mdl")
    save_prior(gmm_dir / "prior.pt", torch.full((graph.num_pdfs,), -math.log(graph.num_pdfs)))

    def build(exp):
        return _yesno_task(exp, graph, gmm_dir)

    cfg = _cfg("hf", regenerate_every=1, dev_wer=False)
    full, full_task, _, _ = _train(cfg, tmp_path / "full", build)
    short = _cfg("hf", regenerate_every=1, dev_wer=False)
    short.hf.updates = cfg.hf.updates - 1
    _train(short, tmp_path / "part", build)
    res, res_task, _, _ = _train(cfg, tmp_path / "part", build, resume=True)
    assert _strip(res.history) == _strip(full.history)
    assert all(torch.equal(a, b) for a, b in zip(full_task.net.parameters(), res_task.net.parameters()))


def test_keep_models_and_select_by_dev_wer(tmp_path, graph):
    """keep_models writes every report's model; select dev_wer makes final.pt the one of the
    report with the lowest dev WER (the earliest of equals), which it reproduces."""
    gmm_dir = tmp_path / "gmm"
    gmm_dir.mkdir()
    GmmModel.init_mono(TOPO, 1, np.zeros(1), np.ones(1)).write(gmm_dir / "final.mdl")
    save_prior(gmm_dir / "prior.pt", torch.full((graph.num_pdfs,), -math.log(graph.num_pdfs)))
    cfg = _cfg("hf", dev_wer=True, decode_acoustic_scale=0.5, keep_models=True, select="dev_wer")
    exp, task, _, _ = _train(cfg, tmp_path / "run", lambda e: _yesno_task(e, graph, gmm_dir))
    hist = exp.history
    assert sorted(p.name for p in (tmp_path / "run/models").iterdir()) == [f"{h['update']}.pt" for h in hist]
    best = min(hist, key=lambda h: (h["dev_wer"], h["update"]))
    final = torch.load(tmp_path / "run/final.pt", weights_only=True)
    assert final["update"] == best["update"] and final["dev_wer"] == best["dev_wer"]
    kept = torch.load(tmp_path / f"run/models/{best['update']}.pt", weights_only=True)["state_dict"]
    for k, v in final["state_dict"].items():
        torch.testing.assert_close(v, kept[k])
    task.net.load_state_dict(final["state_dict"])
    assert task.evaluate()["dev_wer"] == best["dev_wer"]
    with pytest.raises(ConfigError, match="select: dev_wer needs keep_models"):
        _cfg("hf", dev_wer=True, select="dev_wer")
