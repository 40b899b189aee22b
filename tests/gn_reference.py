"""Test helper: exact Gauss-Newton products G v of a small model against explicit Jacobians.

Used by the MDLSTM (tests/test_mdlstm.py) and BLSTM (tests/test_ctc.py) tests; run it in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, jacrev

from hfasr.criteria.curvature import SoftmaxFisher
from hfasr.optim import GaussNewton, ModelGaussNewton
from hfasr.optim.gn import flatten, unflatten


def explicit_gn(model: nn.Module, x: Tensor, lens: Tensor, olens: Tensor, normalizer: float, mu: float = 0.0) -> Tensor:
    """J_zᵀ H J_z (+ μ Σ_i J_aᵀ D_i J_a) / normalizer with explicit Jacobians (jacrev)."""
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    theta = flatten(params)

    def split(flat):
        return dict(zip(names, unflatten(flat, params)))

    def run(flat):
        z, acts = functional_call(model, split(flat), (x, lens), {"return_preacts": True})
        return (z, *acts) if mu else (z,)

    outs = run(theta)
    # forward mode when the (many) hidden pre-activations are outputs too, reverse mode otherwise
    jacs = (jacfwd if mu else jacrev)(run)(theta)
    z = outs[0]
    Jz = jacs[0].reshape(z.numel(), -1)
    y = torch.softmax(z, -1)
    mask = (torch.arange(z.shape[1]).unsqueeze(0) < olens.unsqueeze(1)).to(z.dtype)
    blocks = [w * (torch.diag(r) - torch.outer(r, r)) for r, w in zip(y.reshape(-1, z.shape[-1]), mask.reshape(-1))]
    G = Jz.T @ torch.block_diag(*blocks) @ Jz
    if mu:
        ds = model.structural_weights(list(outs[1:]), olens)
        for a, J, d in zip(outs[1:], jacs[1:], ds):
            Ja = J.reshape(a.numel(), -1)
            G = G + mu * Ja.T @ (d.reshape(-1, 1) * Ja)
    return G / normalizer


def check_gv(model: nn.Module, x: Tensor, lens: Tensor, mode: str, mu: float) -> None:
    olens = model.output_lengths(lens)
    G = explicit_gn(model, x, lens, olens, 7.0, mu)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    mask = torch.arange(int(olens.max())).unsqueeze(0) < olens.unsqueeze(1)
    structural = mu != 0.0

    def fn(ps):
        return functional_call(model, dict(zip(names, ps)), (x, lens), {"return_preacts": structural})

    curv = lambda z: SoftmaxFisher(z, mask[:, : z.shape[1]])
    sw = (lambda acts: model.structural_weights(acts, olens)) if structural else None
    if mode == "model":  # the model's hand-written R-op
        gn = ModelGaussNewton(model, names, fn, params, curv, 7.0, sw, args=(x, lens), kwargs={"return_preacts": structural})
    else:
        gn = GaussNewton(fn, params, curv, normalizer=7.0, jvp_mode=mode, structural_weights=sw)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        v = torch.randn(G.shape[0], generator=gen)
        assert torch.allclose(gn(v, mu), G @ v, atol=1e-6 * float(G.abs().max()), rtol=1e-6)
    u, v = torch.randn(2, G.shape[0], generator=gen)
    assert abs(float(u @ gn(v, mu) - v @ gn(u, mu))) < 1e-8
    assert float(v @ gn(v, mu)) >= -1e-10
