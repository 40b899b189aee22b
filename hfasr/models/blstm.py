"""Bidirectional LSTM acoustic model written with explicit cells (HF-friendly).

``BLSTM(x, lengths)`` maps padded features (B, T, F) to per-frame logits (B, T', K) with
T' = ⌈T / subsample⌉ (``subsample = 1`` by default, see :meth:`BLSTM.output_lengths`):

    global CMVN  →  [frame stacking by ``subsample``]  →  L × BLSTM layer  →  linear

Why explicit cells rather than ``nn.LSTM``: HF needs J v (forward-mode AD or the double-backward
trick) and the hidden pre-activations for structural damping. ``nn.LSTM`` has neither: on CPU in
float32 it runs ``mkldnn_rnn_layer`` (no forward-mode formula; only the float64 native path
supports ``jvp``), and on CUDA the cuDNN kernel supports neither ``jvp``/``linearize`` nor double
backward (checked with torch 2.11 on an H200 and 2.14 on CPU). Here each layer computes the
input projection of all frames of both directions with one batched matmul, then runs a Python
loop over time in which both directions advance together (one ``baddbmm`` per step for the
recurrent gates of the whole batch). No in-place ops: autograd, ``vjp``, ``jvp`` and
``linearize`` all work.

J v for HF: :meth:`BLSTM.linearize` runs the forward pass once, records the gates and cells, and
returns a hand-written forward-mode derivative (R-op) that reuses them — one J v costs about one
forward pass, and a G v product (with :class:`hfasr.criteria.ctc.ModelGaussNewton`) about 0.9
gradients (``bench/gv_cost_recurrent.py``). ``torch.func.linearize`` gives a similar product
cost but traces the time loop (≈100+ gradients of setup per CG run); ``torch.func.jvp``
recomputes the forward pass with dual tensors (several forward passes).

Padding: the backward direction reads every sequence reversed *within its length*
(:func:`reverse_padded`), so that it starts at the sequence's last valid frame; outputs at
padded frames are unspecified (they never reach valid frames) and must be masked by the
criterion.

Structural damping (Martens & Sutskever 2011; :class:`hfasr.optim.gn.GaussNewton`):
``forward(x, lengths, return_preacts=True)`` returns ``(logits, acts)`` with, per layer,
``[gates_l, cell_l]``: gate pre-activations (2, B, T', 4H) in gate order (i, f, o | g) and cell
states (2, B, T', H) (the pre-activation of the output tanh), both in scan order (dimension 0 =
direction; the backward direction is stored reversed within lengths, so in both directions the
valid frames are t < length). :meth:`BLSTM.structural_weights` gives the matching-loss
Hessians: σ(a)(1 − σ(a)) for the sigmoid gates, 1 − tanh²(a) for the tanh input and the cell
output, zero at padded frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hfasr.config import bounded, check_ranges


@dataclass
class BLSTMConfig:
    """Hyper-parameters of :class:`BLSTM` (the ``blstm:`` section of the CE and CTC training configs)."""

    hidden_size: int = bounded(64, ge=1)  # units per direction
    num_layers: int = bounded(2, ge=1)
    subsample: int = bounded(1, ge=1)  # stack this many frames into one (output frame rate / subsample)
    forget_bias: float = bounded(1.0)

    def __post_init__(self) -> None:
        check_ranges(self)


def frame_mask(lengths: Tensor, T: int) -> Tensor:
    """Bool (B, T): True at frames t < lengths[b]."""
    return torch.arange(T, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def stack_frames(x: Tensor, s: int) -> Tensor:
    """(B, T, F) → (B, ⌈T/s⌉, s·F): s consecutive frames per row (zero-padded at the end)."""
    if s == 1:
        return x
    B, T, F = x.shape
    pad = (-T) % s
    if pad:
        x = torch.cat([x, x.new_zeros(B, pad, F)], 1)
    return x.reshape(B, (T + pad) // s, s * F)


def stacked_lengths(lengths: Tensor, s: int) -> Tensor:
    """Frames per sequence after :func:`stack_frames` by ``s``: ⌈T / s⌉."""
    return lengths if s == 1 else torch.div(lengths + s - 1, s, rounding_mode="floor")


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """Long (B, T): t ↦ L_b − 1 − t for t < L_b, else t (an involution)."""
    t = torch.arange(T, device=lengths.device).unsqueeze(0)
    L = lengths.to(t.device).unsqueeze(1)
    return torch.where(t < L, L - 1 - t, t)


def reverse_padded(x: Tensor, index: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` (B, T, ...) within its length, with
    ``index = reverse_index(lengths, T)``; padded frames stay in place."""
    b = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[b, index]


def _uniform(shape: Sequence[int], bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer; parameters stacked over the two directions.

    ``w_ih`` (2, In, 4H), ``w_hh`` (2, H, 4H), ``bias`` (2, 4H); gate order (i, f, o, g).
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__()
        H = hidden_size
        k = 1.0 / math.sqrt(H)
        self.hidden_size = H
        self.w_ih = _uniform((2, input_size, 4 * H), k)
        self.w_hh = _uniform((2, H, 4 * H), k)
        b = torch.empty(2, 4 * H).uniform_(-k, k)
        b[:, H : 2 * H] += forget_bias
        self.bias = nn.Parameter(b)

    def scan(self, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Run both directions on direction-stacked inputs ``x2`` (2, B, T, In), each already in
        its scan order. Returns hidden states (2, B, T, H), gate pre-activations (2, B, T, 4H)
        and cell states (2, B, T, H)."""
        _, B, T, In = x2.shape
        H = self.hidden_size
        xp = torch.bmm(x2.reshape(2, B * T, In), self.w_ih).reshape(2, B, T, 4 * H) + self.bias[:, None, None, :]
        xs = xp.unbind(2)  # once: indexing t in the loop would cost a full-size gradient per step
        h = x2.new_zeros(2, B, H)
        c = x2.new_zeros(2, B, H)
        hs, gs, cs = [], [], []
        for t in range(T):
            a = torch.baddbmm(xs[t], h, self.w_hh)
            s = torch.sigmoid(a[..., : 3 * H])
            g = torch.tanh(a[..., 3 * H :])
            c = s[..., H : 2 * H] * c + s[..., :H] * g
            h = s[..., 2 * H :] * torch.tanh(c)
            hs.append(h)
            gs.append(a)
            cs.append(c)
        return torch.stack(hs, 2), torch.stack(gs, 2), torch.stack(cs, 2)

    def tangent(self, x2: Tensor, a: Tensor, c: Tensor, dx2: Tensor | None, w: Mapping[str, Tensor],
                dw: Mapping[str, Tensor], acts: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Forward-mode derivative (R-op) of :meth:`scan` at the recorded point (inputs ``x2``,
        gate pre-activations ``a``, cells ``c``): tangents of (h, a, c) for the input tangent
        ``dx2`` (None: 0) and parameter tangents ``dw`` (missing keys: 0); ``w``: the
        parameter values at the linearization point; ``acts=False``: only the tangent of h."""
        _, B, T, In = x2.shape
        H = self.hidden_size
        s = torch.sigmoid(a[..., : 3 * H])
        g = torch.tanh(a[..., 3 * H :])
        tc = torch.tanh(c)
        zero = c.new_zeros(2, B, 1, H)
        c_prev = torch.cat([zero, c[:, :, :-1]], 2)
        ds = s * (1 - s)
        i, f, o = s[..., :H], s[..., H : 2 * H], s[..., 2 * H :]
        # dc = Σ_gates dA·K + f·dc_prev ; dh = dA_o·K_o + M·dc   (gate order i, f, o, g)
        K = torch.cat([ds[..., :H] * g, ds[..., H : 2 * H] * c_prev, ds[..., 2 * H :] * tc, i * (1 - g * g)], -1)
        M = o * (1 - tc * tc)
        dxp = a.new_zeros(2, B * T, 4 * H)
        if dx2 is not None:
            dxp = dxp + torch.bmm(dx2.reshape(2, B * T, In), w["w_ih"])
        if "w_ih" in dw:
            dxp = dxp + torch.bmm(x2.reshape(2, B * T, In), dw["w_ih"])
        if "w_hh" in dw:
            h_prev = torch.cat([zero, (o * tc)[:, :, :-1]], 2)
            dxp = dxp + torch.bmm(h_prev.reshape(2, B * T, H), dw["w_hh"])
        dxp = dxp.reshape(2, B, T, 4 * H)
        if "bias" in dw:
            dxp = dxp + dw["bias"][:, None, None, :]
        dxs, Ks, Fs, Ms = dxp.unbind(2), K.unbind(2), f.unbind(2), M.unbind(2)
        w_hh = w["w_hh"]
        dh = dc = None
        dhs, dAs, dcs = [], [], []
        for t in range(T):
            dA = dxs[t] if dh is None else torch.baddbmm(dxs[t], dh, w_hh)
            p = dA * Ks[t]
            dc_new = p[..., :H] + p[..., H : 2 * H] + p[..., 3 * H :]
            dc = dc_new if dc is None else dc_new + Fs[t] * dc
            dh = p[..., 2 * H : 3 * H] + Ms[t] * dc
            dhs.append(dh)
            dAs.append(dA)
            dcs.append(dc)
        if not acts:
            return torch.stack(dhs, 2), None, None
        return torch.stack(dhs, 2), torch.stack(dAs, 2), torch.stack(dcs, 2)


def split_tangents(tangents: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tangents`` under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tangents.items() if k.startswith(prefix + ".")}


class BLSTM(nn.Module):
    """Bidirectional LSTM: (B, T, F) features + lengths → (B, T', K) logits.

    Args:
        input_dim: feature dimension F.
        num_outputs: K (CTC: tokens + blank; hybrid: pdfs).
        hidden_size: H per direction.
        num_layers: L.
        subsample: stack this many consecutive frames into one (T' = ⌈T / subsample⌉).
        forget_bias: added to the forget-gate bias at initialization.
    """

    def __init__(self, input_dim: int, num_outputs: int, hidden_size: int = 128, num_layers: int = 2,
                 subsample: int = 1, forget_bias: float = 1.0) -> None:
        super().__init__()
        if subsample < 1:
            raise ValueError(f"subsample must be >= 1, got {subsample}")
        self.input_dim = input_dim
        self.subsample = subsample
        self.register_buffer("cmvn_mean", torch.zeros(input_dim))
        self.register_buffer("cmvn_std", torch.ones(input_dim))
        sizes = [input_dim * subsample] + [2 * hidden_size] * num_layers
        self.layers = nn.ModuleList(BiLSTMLayer(sizes[i], hidden_size, forget_bias) for i in range(num_layers))
        self.output = nn.Linear(2 * hidden_size, num_outputs)
        self.model_config = {"arch": "blstm", "input_dim": input_dim, "num_outputs": num_outputs,
                             "hidden_size": hidden_size, "num_layers": num_layers, "subsample": subsample,
                             "forget_bias": forget_bias}

    @torch.no_grad()
    def set_cmvn(self, mean: Tensor, std: Tensor) -> None:
        """Set the global CMVN statistics (std is floored at 1e-5)."""
        self.cmvn_mean.copy_(mean)
        self.cmvn_std.copy_(std.clamp_min(1e-5))

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Number of output frames of each sequence."""
        return stacked_lengths(lengths, self.subsample)

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                return_preacts: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T', K); with ``return_preacts`` also ``[gates_1, cell_1, gates_2, ...]``."""
        return self._run(x, lengths, return_preacts, None)

    def _run(self, x: Tensor, lengths: Tensor | None, return_preacts: bool, tape: list | None):
        B, T, _ = x.shape
        x = (x - self.cmvn_mean) / self.cmvn_std
        x = stack_frames(x, self.subsample)
        T = x.shape[1]
        lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else self.output_lengths(lengths.cpu())
        rev = reverse_index(lengths, T).to(x.device)
        acts: list[Tensor] = []
        for layer in self.layers:
            x2 = torch.stack([x, reverse_padded(x, rev)], 0)
            h, a, c = layer.scan(x2)
            x = torch.cat([h[0], reverse_padded(h[1], rev)], -1)
            if return_preacts:
                acts += [a, c]
            if tape is not None:
                tape.append((x2, a, c))
        z = self.output(x)
        if tape is not None:
            tape.append((x, rev))
        return (z, acts) if return_preacts else z

    def linearize(self, x: Tensor, lengths: Tensor | None = None, return_preacts: bool = False
                  ) -> tuple[Tensor | tuple[Tensor, list[Tensor]], Callable[[Mapping[str, Tensor]], Tensor | tuple[Tensor, list[Tensor]]]]:
        """Forward pass at the current parameters (no autograd) and its hand-written J v.

        Returns ``(out, jvp)`` where ``out`` is what :meth:`forward` returns and ``jvp`` maps
        parameter tangents ``{name: tensor}`` (names of :meth:`named_parameters`; missing: 0)
        to the tangent of ``out``. It reuses the recorded activations, so one J v costs about
        one forward pass (``torch.func.jvp`` recomputes them, ``torch.func.linearize`` needs a
        long trace of the time loop). The parameters are copied: later in-place updates of
        the model do not move the linearization point."""
        w = {n: p.detach().clone() for n, p in self.named_parameters()}
        tape: list = []
        with torch.no_grad():
            out = self._run(x, lengths, return_preacts, tape)

        def jvp(tangents: Mapping[str, Tensor]):
            with torch.no_grad():
                dx = None
                dacts: list[Tensor] = []
                for l, (x2, a, c) in enumerate(tape[:-1]):
                    rev = tape[-1][1]
                    dx2 = None if dx is None else torch.stack([dx, reverse_padded(dx, rev)], 0)
                    dh, da, dc = self.layers[l].tangent(x2, a, c, dx2, split_tangents(w, f"layers.{l}"),
                                                        split_tangents(tangents, f"layers.{l}"), return_preacts)
                    dx = torch.cat([dh[0], reverse_padded(dh[1], rev)], -1)
                    if return_preacts:
                        dacts += [da, dc]
                xL = tape[-1][0]
                dz = xL.new_zeros(*xL.shape[:-1], w["output.weight"].shape[0]) if dx is None else dx @ w["output.weight"].T
                if "output.weight" in tangents:
                    dz = dz + xL @ tangents["output.weight"].T
                if "output.bias" in tangents:
                    dz = dz + tangents["output.bias"]
                return (dz, dacts) if return_preacts else dz

        return out, jvp

    @staticmethod
    def structural_weights(acts: list[Tensor], lengths: Tensor | None = None) -> list[Tensor]:
        """Matching-loss Hessians for ``acts`` from ``forward(..., return_preacts=True)``.

        ``lengths``: output-frame lengths (:meth:`output_lengths`); padded frames get weight 0.
        """
        out = []
        for i, a in enumerate(acts):
            if i % 2 == 0:  # gates (i, f, o | g)
                H = a.shape[-1] // 4
                s = torch.sigmoid(a[..., : 3 * H])
                g = torch.tanh(a[..., 3 * H :])
                d = torch.cat([s * (1 - s), 1 - g * g], -1)
            else:  # cell state → tanh
                d = 1 - torch.tanh(a) ** 2
            if lengths is not None:
                m = frame_mask(lengths.to(a.device), a.shape[2]).to(a.dtype)
                d = d * m[None, :, :, None]
            out.append(d)
        return out
