"""DNN acoustic model: shapes, splicing, CMVN, checkpoints, forward-mode AD, log-likelihoods."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jvp

from hfasr.config import from_dict
from hfasr.errors import ConfigError, DataError
from hfasr.models import (
    DNN,
    DNNConfig,
    build_model,
    compute_loglikes,
    load_checkpoint,
    load_model,
    save_model,
    splice,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


def small_dnn(**kw) -> DNN:
    torch.manual_seed(0)
    args = {"input_dim": 3, "num_outputs": 5, "hidden_dim": 8, "num_layers": 2, "context": 2}
    args.update(kw)
    return build_model({"arch": "dnn", **args})


def test_shapes():
    m = small_dnn()
    x = torch.randn(4, 7, 3)
    assert m(x).shape == (4, 7, 5)
    assert m(x, torch.tensor([7, 5, 1, 3])).shape == (4, 7, 5)
    assert m.forward_spliced(torch.randn(10, 15)).shape == (10, 5)
    assert m.spliced_dim == 15
    with pytest.raises(ValueError, match="expects features"):
        m(torch.randn(7, 3))
    with pytest.raises(ValueError, match="spliced rows"):
        m.forward_spliced(torch.randn(10, 3))
    assert small_dnn(num_layers=0, context=0)(x).shape == (4, 7, 5)


def test_splice_edges_hand_checked():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1)
    got = splice(x, 1)[0]
    assert got.tolist() == [[1, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    # context 2 on a 3-frame sequence: both edges replicated twice
    x3 = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]).reshape(1, 3, 2)
    assert splice(x3, 2)[0, 0].tolist() == [1, 10, 1, 10, 1, 10, 2, 20, 3, 30]
    assert splice(x3, 2)[0, 2].tolist() == [1, 10, 2, 20, 3, 30, 3, 30, 3, 30]
    # with lengths, the last *valid* frame is replicated, never the padding
    xp = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 0.0]]).reshape(2, 4, 1)
    got = splice(xp, 1, torch.tensor([4, 3]))
    assert got[1, :3].tolist() == [[5, 5, 6], [5, 6, 7], [6, 7, 7]]
    assert got[0].tolist() == [[1, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]


def test_padded_batch_matches_single_utterances_and_spliced_rows():
    m = small_dnn()
    a, b = torch.randn(6, 3), torch.randn(4, 3)
    x = torch.zeros(2, 6, 3)
    x[0], x[1, :4] = a, b
    x[1, 4:] = 99.0  # padding must not leak into valid frames
    z = m(x, torch.tensor([6, 4]))
    torch.testing.assert_close(z[0], m(a[None])[0])
    torch.testing.assert_close(z[1, :4], m(b[None])[0])
    rows = splice(b[None], m.context)[0]  # raw spliced rows → forward_spliced
    torch.testing.assert_close(m.forward_spliced(rows), z[1, :4])
    torch.testing.assert_close(m.frames()(rows), z[1, :4])


def test_cmvn_applied():
    m = small_dnn()
    ref = small_dnn()  # same init (same seed), identity CMVN
    mean, std = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([2.0, 0.5, 4.0])
    m.set_cmvn(mean, std)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(m(x), ref((x - mean) / std))
    rows = splice(x, 2)[0]
    torch.testing.assert_close(m.forward_spliced(rows), ref.forward_spliced(splice((x - mean) / std, 2)[0]))
    assert not torch.allclose(m(x), ref(x))


def test_checkpoint_round_trip_weights_only(tmp_path):
    m = small_dnn(activation="relu")
    m.set_cmvn(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0]))
    path = tmp_path / "m.pt"
    save_model(path, m, epoch=3, note="x")
    raw = torch.load(path, weights_only=True)
    assert raw["model_config"] == {"arch": "dnn", "input_dim": 3, "num_outputs": 5, "hidden_dim": 8,
                                   "num_layers": 2, "context": 2, "activation": "relu", "utt_cmn": False, "init": "glorot",
                                   "dropout": 0.0, "num_ceps": 0}
    assert raw["epoch"] == 3 and not (tmp_path / "m.pt.tmp").exists()
    m2 = load_model(path)
    assert isinstance(m2, DNN) and not m2.training and m2.activation == "relu"
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(m2(x), m(x))
    torch.testing.assert_close(m2.cmvn_std, m.cmvn_std)


def test_bad_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(DataError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "nocfg.pt")
    with pytest.raises(DataError, match="not a model checkpoint"):
        load_checkpoint(tmp_path / "nocfg.pt")
    with pytest.raises(DataError, match="unknown model architecture 'cnn'"):
        build_model({"arch": "cnn"})


def test_config_validation():
    assert DNNConfig().context == 5
    with pytest.raises(ConfigError, match="activation"):
        from_dict(DNNConfig, {"activation": "gelu"}, "conf.yaml")
    with pytest.raises(ConfigError, match="unknown key 'hiden_dim'"):
        from_dict(DNNConfig, {"hiden_dim": 3}, "conf.yaml")
    with pytest.raises(ValueError, match="context"):
        DNNConfig(context=-1)


@pytest.mark.parametrize("act", ["sigmoid", "relu"])
def test_forward_mode_ad_matches_finite_difference(act):
    """HF needs J v by forward-mode AD through functional_call (no in-place tricks)."""
    m = small_dnn(activation=act).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}

    def f(p):
        return functional_call(m, p, (x,))

    _, jv = jvp(f, (params,), (tangent,))
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    torch.testing.assert_close(jv, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)
    # the spliced-rows view too (the frame-level HF objective uses it)
    fr = m.frames()
    rows = splice(x, 2).reshape(-1, 15)
    pf = {k: v.detach() for k, v in fr.named_parameters()}
    _, jv2 = jvp(lambda p: functional_call(fr, p, (rows,)), (pf,),
                 ({k: tangent[k.removeprefix("dnn.")] for k in pf},))
    torch.testing.assert_close(jv2, jv.reshape(-1, 5))


def test_compute_loglikes():
    m = small_dnn()
    feats = torch.randn(9, 3)
    log_prior = torch.log_softmax(torch.randn(5), 0)
    ll = compute_loglikes(m, feats, log_prior)
    assert ll.shape == (9, 5) and ll.dtype == torch.float32
    torch.testing.assert_close(ll, torch.log_softmax(m(feats[None])[0], -1) - log_prior)
    torch.testing.assert_close(compute_loglikes(m, feats, None).exp().sum(-1), torch.ones(9))
    with pytest.raises(DataError, match="prior has 4 pdfs"):
        compute_loglikes(m, feats, torch.zeros(4))


def test_utterance_cmn_consistent_between_training_rows_and_forward():
    from hfasr.data.frames import FrameData

    torch.manual_seed(0)
    m = DNN(3, 4, hidden_dim=5, num_layers=1, context=1, utt_cmn=True).eval()
    x = torch.randn(1, 7, 3) + 5
    fd = FrameData(["u"], [x[0].clone()], [torch.zeros(7, dtype=torch.long)], 4)
    fd.apply_utterance_cmn()
    rows = fd.spliced(torch.arange(7), 1)
    lens = torch.tensor([7])
    assert torch.allclose(m(x, lens)[0], m.forward_spliced(rows), atol=1e-5)
    assert torch.allclose(m(x + 3.0, lens), m(x, lens), atol=1e-5)  # invariant to a constant offset
    # padding does not leak into the mean
    xp = torch.cat([x, 100 * torch.ones(1, 3, 3)], 1)
    assert torch.allclose(m(xp, lens)[0, :7], m(x, lens)[0], atol=1e-5)


def test_sparse_init_has_15_inputs_per_unit():
    m = DNN(10, 4, hidden_dim=20, num_layers=2, context=1, init="sparse")
    for lin in list(m.hidden) + [m.output]:
        assert ((lin.weight != 0).sum(1) == min(15, lin.weight.shape[1])).all()
        assert (lin.bias == 0).all()


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_linearize_jvp_matches_torch_func(activation: str) -> None:
    """DNN.linearize's hand-written J v equals torch.func.jvp for every parameter tangent."""
    from torch.func import functional_call, jvp

    torch.manual_seed(0)
    model = DNN(5, 7, hidden_dim=6, num_layers=2, context=1, activation=activation, utt_cmn=True).double()
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    lens = torch.tensor([9, 6, 4])
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    tangents = tuple(torch.randn_like(p) for p in params)
    out, lin = model.linearize(x, lens)
    assert torch.allclose(out, model(x, lens))
    _, ref_dz = jvp(lambda *ps: functional_call(model, dict(zip(names, ps)), (x, lens)), params, tangents)
    assert torch.allclose(lin(dict(zip(names, tangents))), ref_dz, atol=1e-10)
    # a subset of tangents (the others zero)
    sub = {names[0]: tangents[0], names[-1]: tangents[-1]}
    full = tuple(sub.get(n, torch.zeros_like(p)) for n, p in zip(names, params))
    _, ref_sub = jvp(lambda *ps: functional_call(model, dict(zip(names, ps)), (x, lens)), params, full)
    assert torch.allclose(lin(sub), ref_sub, atol=1e-10)


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    m = DNN(3, 4, hidden_dim=16, num_layers=2, context=1, dropout=0.5)
    x = torch.randn(1, 6, 3)
    m.eval()
    torch.testing.assert_close(m(x), m(x))  # deterministic at evaluation
    m2 = DNN(3, 4, hidden_dim=16, num_layers=2, context=1)
    m2.load_state_dict(m.state_dict())
    m2.eval()
    torch.testing.assert_close(m(x), m2(x))  # inverted dropout: no rescaling at evaluation
    m.train()
    assert not torch.allclose(m(x), m(x))
    assert m.model_config["dropout"] == 0.5
    with pytest.raises(ValueError, match="dropout"):
        DNNConfig(dropout=1.0)


def test_hf_with_dropout_is_a_config_error():
    from hfasr.train.ce import TrainConfig

    with pytest.raises(ValueError, match="dnn.dropout 0.1 needs a first-order optimizer"):
        TrainConfig(optimizer="hf", dnn=DNNConfig(dropout=0.1))


def test_cepstral_input():
    """num_ceps: an orthonormal DCT keeps the first cepstra of each normalised frame; padded
    batches, spliced rows and the hand-written J v agree as for fbank input."""
    from hfasr.models.dnn import dct_matrix

    d = dct_matrix(8, 8).double()
    torch.testing.assert_close(d.T @ d, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)  # float32 matrix
    torch.manual_seed(0)
    m = DNN(8, 5, hidden_dim=6, num_layers=2, context=2, num_ceps=3, utt_cmn=True).double()
    assert m.hidden[0].in_features == 5 * 3 and m.spliced_dim == 5 * 8
    m.set_cmvn(torch.randn(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64) + 0.5)
    a, b = torch.randn(7, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    x = torch.zeros(2, 7, 8, dtype=torch.float64)
    x[0], x[1, :4] = a, b
    lens = torch.tensor([7, 4])
    z = m(x, lens)
    torch.testing.assert_close(z[1, :4], m(b[None])[0])
    rows = splice(b[None] - b.mean(0), m.context)[0]  # rows are utterance-CMN'd raw frames
    torch.testing.assert_close(m.forward_spliced(rows), z[1, :4])
    out, lin = m.linearize(x, lens)
    torch.testing.assert_close(out, z)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach() for p in m.parameters())
    tangents = tuple(torch.randn_like(p) for p in params)
    _, ref = jvp(lambda *ps: functional_call(m, dict(zip(names, ps)), (x, lens)), params, tangents)
    torch.testing.assert_close(lin(dict(zip(names, tangents))), ref)
    with pytest.raises(ValueError, match="num_ceps 9 exceeds the feature dimension 8"):
        DNN(8, 5, num_ceps=9)
