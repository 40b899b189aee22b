"""MDLSTM: the anti-diagonal vectorized scan matches a naive per-cell reference; G v is exact."""

from __future__ import annotations

import pytest
import torch
from gn_reference import check_gv
from torch import Tensor
from torch.func import functional_call

from hfasr.models.mdlstm import MDLSTM

# tiny models in float64 (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread", "float64")


# --------------------------------------------------------------------------- naive reference
def naive_mdlstm_layer(layer, x: Tensor) -> Tensor:
    """One utterance (T, F, C) → (4, T, F, H): a Python loop over every cell of every direction."""
    T, F, _ = x.shape
    H = layer.hidden_size
    out = torch.zeros(4, T, F, H)
    for k, (rt, rf) in enumerate(((False, False), (False, True), (True, False), (True, True))):
        w_in, U_t, U_f, b = layer.w_in[k], layer.w_rec[k][:H], layer.w_rec[k][H:], layer.bias[k]
        h = {}
        c = {}
        ts = range(T - 1, -1, -1) if rt else range(T)
        fs = range(F - 1, -1, -1) if rf else range(F)
        dt, df = (1 if rt else -1), (1 if rf else -1)  # offset of the predecessor
        zero = torch.zeros(H)
        for t in ts:
            for f in fs:
                hp_t, cp_t = h.get((t + dt, f), zero), c.get((t + dt, f), zero)
                hp_f, cp_f = h.get((t, f + df), zero), c.get((t, f + df), zero)
                a = x[t, f] @ w_in + hp_t @ U_t + hp_f @ U_f + b
                i, ft, ff, o = (torch.sigmoid(a[j * H : (j + 1) * H]) for j in range(4))
                g = torch.tanh(a[4 * H :])
                c[t, f] = ft * cp_t + ff * cp_f + i * g
                h[t, f] = o * torch.tanh(c[t, f])
                out[k, t, f] = h[t, f]
    return out


def naive_patch(x: Tensor, p: int) -> Tensor:
    T, F, C = x.shape
    n = -(-F // p)
    out = torch.zeros(T, n, p * C)
    for j in range(n):
        for q in range(p):
            if j * p + q < F:
                out[:, j, q * C : (q + 1) * C] = x[:, j * p + q]
    return out


def naive_mdlstm(model: MDLSTM, x: Tensor) -> Tensor:
    """One utterance (T, F) → logits (T, K)."""
    x = (x - model.cmvn_mean) / model.cmvn_std
    s = model.time_patch
    T, F = x.shape
    T2 = -(-T // s)
    cells = torch.zeros(T2, F, s)  # frame t*s+q of cell t is channel q
    for t in range(T):
        cells[t // s, :, t % s] = x[t]
    h = naive_patch(cells, model.input_patch)
    for i, layer in enumerate(model.lstms):
        o = naive_mdlstm_layer(layer, h)
        h = o.sum(0) if model.combine == "sum" else torch.cat([o[0], o[1], o[2], o[3]], -1)
        if i < len(model.ffs):
            h = torch.tanh(model.ffs[i](naive_patch(h, model.freq_patches[i])))
    return model.output(h.sum(1))


def _tiny(combine="concat", input_patch=1, seed=0, time_patch=1, **kw) -> MDLSTM:
    torch.manual_seed(seed)
    m = MDLSTM(5, 3, hidden_sizes=kw.get("hidden", (3, 2)), ff_sizes=kw.get("ff", (4,)), freq_patches=kw.get("patches", (2,)),
               input_patch=input_patch, combine=combine, time_patch=time_patch)
    m.set_cmvn(torch.randn(5) * 0.1, torch.rand(5) + 0.5)
    return m


@pytest.mark.parametrize("combine,input_patch,time_patch", [("concat", 1, 1), ("sum", 2, 1), ("concat", 2, 3)])
def test_vectorized_matches_naive(combine, input_patch, time_patch):
    m = _tiny(combine, input_patch, time_patch=time_patch)
    x = torch.randn(3, 7, 5)
    lens = torch.tensor([7, 4, 1])
    olens = m.output_lengths(lens)
    assert olens.tolist() == [-(-n // time_patch) for n in (7, 4, 1)]
    with torch.no_grad():
        z = m(x, lens)
        assert z.shape == (3, int(olens.max()), 3)
        for b in range(3):
            ref = naive_mdlstm(m, x[b, : lens[b]])
            assert torch.allclose(z[b, : olens[b]], ref, atol=1e-10), (b, (z[b, : olens[b]] - ref).abs().max())


def test_each_direction_matches_naive():
    """One layer, every direction separately (a wrong flip would only show in some of them)."""
    from hfasr.models.blstm import reverse_index
    from hfasr.models.mdlstm import from_directions, to_directions

    m = _tiny(hidden=(2,), ff=(), patches=())
    layer = m.lstms[0]
    x = torch.randn(2, 5, 4, 1)
    lens = torch.tensor([5, 3])
    rev = reverse_index(lens, 5)
    with torch.no_grad():
        out, gates, cells = layer(to_directions(x, rev))
        out = from_directions(out, rev)
        for b in range(2):
            ref = naive_mdlstm_layer(layer, x[b, : lens[b]])
            for k in range(4):
                assert torch.allclose(out[k, b, : lens[b]], ref[k], atol=1e-10), k
    assert gates.shape == (4, 2, 5 + 4 - 1, 4, 10) and cells.shape == (4, 2, 8, 4, 2)


@pytest.mark.parametrize("time_patch", [1, 2])
def test_padding_does_not_leak(time_patch):
    m = _tiny(time_patch=time_patch)
    x = torch.randn(2, 7, 5)
    lens = torch.tensor([7, 5])  # with time_patch 2 the last cell of utterance 1 holds frame 4 and padding
    x2 = x.clone()
    x2[1, 5:] = 100.0  # garbage in the padding
    n = int(m.output_lengths(lens)[1])
    with torch.no_grad():
        assert torch.allclose(m(x, lens)[1, :n], m(x2, lens)[1, :n], atol=1e-12)


@pytest.mark.parametrize("combine,input_patch,time_patch", [("concat", 1, 1), ("sum", 2, 1), ("concat", 1, 2)])
def test_hand_written_jvp_matches_autodiff(combine, input_patch, time_patch):
    from torch.func import jvp

    m = _tiny(combine, input_patch, seed=3, time_patch=time_patch)
    x = torch.randn(3, 6, 5)
    lens = torch.tensor([6, 4, 1])
    names = [n for n, _ in m.named_parameters()]
    P = tuple(p.detach() for p in m.parameters())
    vt = tuple(torch.randn_like(p) for p in P)
    ref_z, ref_a = jvp(lambda p: functional_call(m, dict(zip(names, p)), (x, lens), {"return_preacts": True}), (P,), (vt,))[1]
    out, lin = m.linearize(x, lens, return_preacts=True)
    z, _ = functional_call(m, dict(zip(names, P)), (x, lens), {"return_preacts": True})
    assert torch.allclose(out[0], z, atol=1e-12)
    got_z, got_a = lin(dict(zip(names, vt)))
    assert torch.allclose(got_z, ref_z, atol=1e-10)
    assert len(got_a) == len(ref_a) and all(torch.allclose(g, r, atol=1e-10) for g, r in zip(got_a, ref_a))
    one = {"lstms.1.w_rec": vt[names.index("lstms.1.w_rec")]}  # a single parameter's tangent; the rest 0
    ref = jvp(lambda p: functional_call(m, dict(zip(names, p)), (x, lens)), (P,),
              (tuple(one.get(n, torch.zeros_like(p)) for n, p in zip(names, P)),))[1]
    assert torch.allclose(m.linearize(x, lens)[1](one), ref, atol=1e-10)
    # the linearization point is a copy: later in-place parameter updates do not move it
    with torch.no_grad():
        m.output.weight.add_(1.0)
    assert torch.allclose(lin(dict(zip(names, vt)))[0], ref_z, atol=1e-10)


# --------------------------------------------------------------------------- exact G v

@pytest.mark.parametrize("mode,mu", [("model", 0.0), ("model", 0.3), ("linearize", 0.0), ("double-vjp", 0.0)])
def test_gv_exact_tiny_mdlstm(mode, mu):
    m = _tiny(hidden=(2, 2), ff=(2,), patches=(2,), seed=1)
    m.lstms[0].w_in.data.mul_(2.0)  # livelier gates
    x = torch.randn(2, 4, 5)
    check_gv(m, x, torch.tensor([4, 3]), mode, mu)
