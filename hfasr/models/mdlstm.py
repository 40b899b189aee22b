"""Multidimensional LSTM (Graves, Fernández & Schmidhuber 2007) over the time × frequency plane.

The features (B, T, F) are a 1-channel image. One :class:`MDLSTMLayer` scans it from the four
corners; a cell at (t, f) of the direction that scans forward in time and frequency receives the
states of its predecessors (t−1, f) and (t, f−1)::

    a  = W x[t,f] + U_t h[t−1,f] + U_f h[t,f−1] + b          (5H: i, f_t, f_f, o | g)
    c  = σ(f_t)·c[t−1,f] + σ(f_f)·c[t,f−1] + σ(i)·tanh(g)     (one forget gate per dimension)
    h  = σ(o)·tanh(c)

The other three directions run the same recurrence on the image flipped in time (within each
sequence's length, :func:`~hfasr.models.blstm.reverse_padded`), in frequency, or in both, and
their outputs are flipped back. Direction order (time reversed?, frequency reversed?):
(no, no), (no, yes), (yes, no), (yes, yes).

Vectorized over anti-diagonals: all cells with t + f = d depend only on diagonal d − 1, so the
state of a diagonal is kept as a (·, F, H) tensor indexed by f (cell (d − f, f)); predecessor
(t−1, f) is the previous diagonal at the same index and (t, f−1) the previous diagonal shifted
by one. The input projections are skewed once into diagonal order with one gather, the loop
runs over the T + F − 1 diagonals with one batched matmul per step for all four directions and
the whole batch, and the outputs are unskewed with one gather. Cells outside the image (t < 0 or
t ≥ T) are zeroed by a mask. No in-place ops: autograd, ``vjp``, ``jvp`` and ``linearize`` work.
:meth:`MDLSTM.linearize` gives the hand-written forward-mode derivative (R-op) over the recorded
diagonals, as :meth:`hfasr.models.blstm.BLSTM.linearize` does for the BLSTM (G v ≈ 0.9
gradients, ``bench/gv_cost_recurrent.py``).

Hierarchy (Graves 2009; Cho et al. 2015)::

    CMVN → [freq patch] → MDLSTM → (freq patch p_1 → tanh FF) → MDLSTM → … → MDLSTM
         → Σ over frequency → linear → logits (B, T, K)

Between MDLSTM layers a feed-forward tanh layer reads non-overlapping (1 × p) patches over
frequency (frequency is zero-padded to a multiple of p), so frequency shrinks by p per level;
time is subsampled only at the input: with ``time_patch = s`` an input cell reads s consecutive
frames × ``input_patch`` bins (T' = ⌈T / s⌉ output frames, :meth:`MDLSTM.output_lengths`; frames
past a sequence's length are zeroed first), which makes the 2-D scan s times shorter, as the
BLSTM's frame stacking does. Directions are concatenated
(``combine="concat"``, 4H features per cell) or summed (H).

Structural damping: ``forward(..., return_preacts=True)`` returns ``(logits, acts)`` with
``acts = [gates_1, cell_1, ff_1, gates_2, cell_2, ff_2, …, gates_L, cell_L]``: gate
pre-activations (4, B, D, F_l, 5H) and cell states (4, B, D, F_l, H) in *diagonal* layout
(D = T + F_l − 1, entry (d, f) is cell (d − f, f) in scan order) and the FF pre-activations
(B, T, F_{l+1}, N). :meth:`MDLSTM.structural_weights` gives the matching-loss Hessians (sigmoid
σ(1−σ), tanh 1 − tanh²) with zeros outside each sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from hfasr.config import bounded, check_ranges, limits
from hfasr.models.blstm import (
    frame_mask,
    reverse_index,
    reverse_padded,
    split_tangents,
    stack_frames,
    stacked_lengths,
)

#: (time reversed, frequency reversed) of the four scan directions.
DIRECTIONS: tuple[tuple[bool, bool], ...] = ((False, False), (False, True), (True, False), (True, True))


@dataclass
class MDLSTMConfig:
    """Hyper-parameters of :class:`MDLSTM` (the ``mdlstm:`` section of the CE and CTC training configs)."""

    hidden_sizes: list[int] = field(  # per MDLSTM level
        default_factory=lambda: [8, 16], metadata=limits(ge=1, each=True, nonempty=True))
    ff_sizes: list[int] = field(default_factory=lambda: [16], metadata=limits(ge=1, each=True))  # tanh layers between levels
    freq_patches: list[int] = field(  # frequency collapse between levels
        default_factory=lambda: [4], metadata=limits(ge=1, each=True))
    input_patch: int = bounded(1, ge=1)  # frequency bins per input cell
    time_patch: int = bounded(1, ge=1)  # frames per input cell (output frame rate / time_patch)
    combine: Literal["concat", "sum"] = "concat"  # the four directions' outputs
    # initial bias of both forget gates. A cell adds σ(f_t)·c[t−1,f] + σ(f_f)·c[t,f−1]: with +1 the
    # two gates sum to 1.46, so cell states grow along the diagonals and the model is far from
    # linear in its parameters (HF's Gauss-Newton model then over-predicts every reduction, ρ ≪ ¼);
    # −1 (sum 0.54) keeps the cells contracting. The CTC recipes use −1; see docs/hf-training.md.
    forget_bias: float = bounded(1.0)

    def __post_init__(self) -> None:
        check_ranges(self)  # the list lengths are checked when the model is built (an unused section may differ)


def _uniform(shape: Sequence[int], bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


def to_directions(x: Tensor, rev: Tensor) -> Tensor:
    """(B, T, F, C) → (4, B, T, F, C): the image as seen by each scan direction."""
    xt = reverse_padded(x, rev)
    return torch.stack([x, x.flip(2), xt, xt.flip(2)], 0)


def from_directions(h: Tensor, rev: Tensor) -> Tensor:
    """Inverse of :func:`to_directions` applied per direction: (4, B, T, F, H) → same shape."""
    return torch.stack([h[0], h[1].flip(2), reverse_padded(h[2], rev), reverse_padded(h[3].flip(2), rev)], 0)


def diagonal_index(T: int, F: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Indices of the skew (t, f) → (d = t + f, f): ``t_of[d, f] = clamp(d − f)`` (D, F) and the
    validity mask ``0 ≤ d − f < T`` (D, F)."""
    d = torch.arange(T + F - 1, device=device).unsqueeze(1)
    f = torch.arange(F, device=device).unsqueeze(0)
    t = d - f
    return t.clamp(0, T - 1), (t >= 0) & (t < T)


class MDLSTMLayer(nn.Module):
    """Four-direction 2-D LSTM layer: (B, T, F, C) → (4, B, T, F, H) (per-direction outputs).

    Parameters stacked over directions: ``w_in`` (4, C, 5H), ``w_rec`` (4, 2H, 5H) (rows: U_t for
    h[t−1, f], then U_f for h[t, f−1]), ``bias`` (4, 5H); gate order (i, f_t, f_f, o, g).
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__()
        H = hidden_size
        k = 1.0 / math.sqrt(2 * H)
        self.hidden_size = H
        self.w_in = _uniform((4, input_size, 5 * H), 1.0 / math.sqrt(max(input_size, 1)))
        self.w_rec = _uniform((4, 2 * H, 5 * H), k)
        b = torch.empty(4, 5 * H).uniform_(-k, k)
        b[:, H : 3 * H] += forget_bias
        self.bias = nn.Parameter(b)

    def forward(self, x4: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x4`` (4, B, T, F, C): each direction's input in its scan order. Returns outputs
        (4, B, T, F, H) in scan order, and gate pre-activations (4, B, D, F, 5H) and cell states
        (4, B, D, F, H) in diagonal layout."""
        _, B, T, F, C = x4.shape
        H = self.hidden_size
        tix, valid = diagonal_index(T, F, x4.device)
        D = T + F - 1
        fix = torch.arange(F, device=x4.device).expand(D, F)
        xp = torch.bmm(x4.reshape(4, B * T * F, C), self.w_in).reshape(4, B, T, F, 5 * H) + self.bias[:, None, None, None]
        # skewed into diagonal order; unbind once (indexing d inside the loop would make the
        # backward pass allocate a full-size gradient per diagonal)
        xs = xp[:, :, tix, fix].reshape(4, B, D, F * 5 * H).unbind(2)
        m = valid.to(x4.dtype).unsqueeze(-1)  # (D, F, 1)
        h = x4.new_zeros(4, B, F, H)
        c = x4.new_zeros(4, B, F, H)
        zero = x4.new_zeros(4, B, 1, H)
        hs, gs, cs = [], [], []
        for d in range(D):
            h_f = torch.cat([zero, h[:, :, :-1]], 2)  # h[t, f−1] sits at index f−1 of diagonal d−1
            c_f = torch.cat([zero, c[:, :, :-1]], 2)
            rec = torch.cat([h, h_f], -1).reshape(4, B * F, 2 * H)
            a = torch.baddbmm(xs[d].reshape(4, B * F, 5 * H), rec, self.w_rec).reshape(4, B, F, 5 * H)
            s = torch.sigmoid(a[..., : 4 * H])
            g = torch.tanh(a[..., 4 * H :])
            c = (s[..., H : 2 * H] * c + s[..., 2 * H : 3 * H] * c_f + s[..., :H] * g) * m[d]
            h = s[..., 3 * H : 4 * H] * torch.tanh(c)
            hs.append(h)
            gs.append(a)
            cs.append(c)
        hd = torch.stack(hs, 2)  # (4, B, D, F, H)
        tt = torch.arange(T, device=x4.device).unsqueeze(1)
        ff = torch.arange(F, device=x4.device).unsqueeze(0)
        out = hd[:, :, tt + ff, ff]  # unskew: (4, B, T, F, H)
        return out, torch.stack(gs, 2), torch.stack(cs, 2)

    def tangent(self, x4: Tensor, a: Tensor, c: Tensor, dx4: Tensor | None, w: Mapping[str, Tensor],
                dw: Mapping[str, Tensor], acts: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Forward-mode derivative (R-op) of :meth:`forward` at the recorded point (input ``x4``,
        diagonal-layout gate pre-activations ``a`` and cells ``c``): tangents of (outputs, a, c)
        for the input tangent ``dx4`` (None: 0) and parameter tangents ``dw`` (missing: 0);
        ``w``: parameter values at the linearization point."""
        _, B, T, F, C = x4.shape
        H = self.hidden_size
        D = T + F - 1
        tix, valid = diagonal_index(T, F, x4.device)
        fix = torch.arange(F, device=x4.device).expand(D, F)
        m = valid.to(a.dtype).unsqueeze(-1)
        s = torch.sigmoid(a[..., : 4 * H])
        g = torch.tanh(a[..., 4 * H :])
        tc = torch.tanh(c)
        i, f_t, f_f, o = (s[..., k * H : (k + 1) * H] for k in range(4))
        zd = c.new_zeros(4, B, 1, F, H)
        zf = c.new_zeros(4, B, D, 1, H)
        c_t = torch.cat([zd, c[:, :, :-1]], 2)  # c[t−1, f]: previous diagonal, same index
        c_f = torch.cat([zf, c_t[:, :, :, :-1]], 3)  # c[t, f−1]: previous diagonal, index f−1
        ds = s * (1 - s)
        # dc = (Σ_gates dA·K + f_t·dc[t−1,f] + f_f·dc[t,f−1])·mask ;  dh = dA_o·K_o + M·dc
        K = torch.cat([ds[..., :H] * g, ds[..., H : 2 * H] * c_t, ds[..., 2 * H : 3 * H] * c_f,
                       ds[..., 3 * H :] * tc, i * (1 - g * g)], -1)
        M = o * (1 - tc * tc)
        dxp = None
        if dx4 is not None:
            dxp = torch.bmm(dx4.reshape(4, B * T * F, C), w["w_in"])
        if "w_in" in dw:
            t_ = torch.bmm(x4.reshape(4, B * T * F, C), dw["w_in"])
            dxp = t_ if dxp is None else dxp + t_
        if "bias" in dw:
            b_ = dw["bias"][:, None, :].expand(4, B * T * F, 5 * H)
            dxp = b_ if dxp is None else dxp + b_
        dxs = a.new_zeros(4, B, D, F, 5 * H) if dxp is None else dxp.reshape(4, B, T, F, 5 * H)[:, :, tix, fix]
        if "w_rec" in dw:
            h = o * tc
            h_t = torch.cat([zd, h[:, :, :-1]], 2)
            h_f = torch.cat([zf, h_t[:, :, :, :-1]], 3)
            rec = torch.cat([h_t, h_f], -1).reshape(4, B * D * F, 2 * H)
            dxs = dxs + torch.bmm(rec, dw["w_rec"]).reshape(4, B, D, F, 5 * H)
        dxs_d = dxs.unbind(2)
        K_d, Ft_d, Ff_d, M_d = K.unbind(2), f_t.unbind(2), f_f.unbind(2), M.unbind(2)
        w_rec = w["w_rec"]
        z1 = a.new_zeros(4, B, 1, H)
        dh = dc = None
        dhs, dAs, dcs = [], [], []
        for d in range(D):
            if dh is None:
                dA = dxs_d[d]
            else:
                dh_f = torch.cat([z1, dh[:, :, :-1]], 2)
                rec = torch.cat([dh, dh_f], -1).reshape(4, B * F, 2 * H)
                dA = torch.baddbmm(dxs_d[d].reshape(4, B * F, 5 * H), rec, w_rec).reshape(4, B, F, 5 * H)
            p = dA * K_d[d]
            dc_new = p[..., :H] + p[..., H : 2 * H] + p[..., 2 * H : 3 * H] + p[..., 4 * H :]
            if dc is not None:
                dc_new = dc_new + Ft_d[d] * dc + Ff_d[d] * torch.cat([z1, dc[:, :, :-1]], 2)
            dc = dc_new * m[d]
            dh = p[..., 3 * H : 4 * H] + M_d[d] * dc
            dhs.append(dh)
            dAs.append(dA)
            dcs.append(dc)
        tt = torch.arange(T, device=x4.device).unsqueeze(1)
        ff = torch.arange(F, device=x4.device).unsqueeze(0)
        dout = torch.stack(dhs, 2)[:, :, tt + ff, ff]
        if not acts:
            return dout, None, None
        return dout, torch.stack(dAs, 2), torch.stack(dcs, 2)


class MDLSTM(nn.Module):
    """Hierarchical MDLSTM acoustic model: (B, T, F) features + lengths → (B, T, K) logits.

    Args:
        input_dim: number of frequency bins F.
        num_outputs: K.
        hidden_sizes: H per direction of each MDLSTM layer (L layers).
        ff_sizes: width of the tanh FF layer after each MDLSTM layer but the last (L − 1).
        freq_patches: frequency patch size read by each of those FF layers (L − 1).
        input_patch: frequency patch of the input image (the first layer sees ⌈F/p⌉ bins of p
            channels each).
        time_patch: frames per input cell (T' = ⌈T / time_patch⌉ output frames); must be 1 for
            hybrid (frame-level) training.
        combine: ``"concat"`` (4H features per cell) or ``"sum"`` (H) over the directions.
    """

    def __init__(self, input_dim: int, num_outputs: int, hidden_sizes: Sequence[int] = (8, 16),
                 ff_sizes: Sequence[int] = (16,), freq_patches: Sequence[int] = (4,), input_patch: int = 1,
                 combine: Literal["concat", "sum"] = "concat", forget_bias: float = 1.0,
                 time_patch: int = 1) -> None:
        super().__init__()
        L = len(hidden_sizes)
        if L < 1 or len(ff_sizes) != L - 1 or len(freq_patches) != L - 1:
            raise ValueError("MDLSTM needs L >= 1 hidden sizes and L - 1 ff_sizes and freq_patches")
        if combine not in ("concat", "sum"):
            raise ValueError(f"combine must be 'concat' or 'sum', got {combine!r}")
        if input_patch < 1 or time_patch < 1:
            raise ValueError(f"input_patch and time_patch must be >= 1, got {input_patch}, {time_patch}")
        self.input_dim = input_dim
        self.input_patch = input_patch
        self.time_patch = time_patch
        self.freq_patches = tuple(freq_patches)
        self.combine = combine
        self.register_buffer("cmvn_mean", torch.zeros(input_dim))
        self.register_buffer("cmvn_std", torch.ones(input_dim))
        mult = 4 if combine == "concat" else 1
        self.lstms = nn.ModuleList()
        self.ffs = nn.ModuleList()
        c = input_patch * time_patch
        for i, H in enumerate(hidden_sizes):
            self.lstms.append(MDLSTMLayer(c, H, forget_bias))
            if i < L - 1:
                self.ffs.append(nn.Linear(mult * H * freq_patches[i], ff_sizes[i]))
                c = ff_sizes[i]
        self.output = nn.Linear(mult * hidden_sizes[-1], num_outputs)
        self.model_config = {"arch": "mdlstm", "input_dim": input_dim, "num_outputs": num_outputs,
                             "hidden_sizes": list(hidden_sizes), "ff_sizes": list(ff_sizes),
                             "freq_patches": list(freq_patches), "input_patch": input_patch, "combine": combine,
                             "forget_bias": forget_bias, "time_patch": time_patch}

    @torch.no_grad()
    def set_cmvn(self, mean: Tensor, std: Tensor) -> None:
        """Set the global CMVN statistics (std is floored at 1e-5)."""
        self.cmvn_mean.copy_(mean)
        self.cmvn_std.copy_(std.clamp_min(1e-5))

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames per sequence: ⌈T / time_patch⌉."""
        return stacked_lengths(lengths, self.time_patch)

    def _input_image(self, x: Tensor, lengths: Tensor) -> Tensor:
        """CMVN'd (B, T, F) → (B, T', ⌈F/p⌉, p·s) input cells (p = input_patch, s = time_patch)."""
        x = (x - self.cmvn_mean) / self.cmvn_std
        s = self.time_patch
        if s == 1:
            return self.patch(x.unsqueeze(-1), self.input_patch)
        B, T, F = x.shape
        x = stack_frames(x * frame_mask(lengths.to(x.device), T).to(x.dtype).unsqueeze(-1), s)
        x = x.reshape(B, x.shape[1], s, F).transpose(2, 3)  # (B, T', F, s)
        return self.patch(x, self.input_patch)

    @staticmethod
    def patch(x: Tensor, p: int) -> Tensor:
        """(B, T, F, C) → (B, T, ⌈F/p⌉, p·C): non-overlapping frequency patches (zero-padded)."""
        if p == 1:
            return x
        B, T, F, C = x.shape
        pad = (-F) % p
        if pad:
            x = torch.cat([x, x.new_zeros(B, T, pad, C)], 2)
        return x.reshape(B, T, (F + pad) // p, p * C)

    def _combine(self, h4: Tensor) -> Tensor:
        if self.combine == "sum":
            return h4.sum(0)
        return torch.cat(h4.unbind(0), -1)

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                return_preacts: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, T, K); with ``return_preacts`` also the structural-damping activations."""
        return self._run(x, lengths, return_preacts, None)

    def _run(self, x: Tensor, lengths: Tensor | None, return_preacts: bool, tape: list | None):
        B, T, _ = x.shape
        lengths = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths.cpu()
        h = self._input_image(x, lengths)
        rev = reverse_index(self.output_lengths(lengths), h.shape[1]).to(x.device)
        acts: list[Tensor] = []
        for i, lstm in enumerate(self.lstms):
            x4 = to_directions(h, rev)
            out, a, c = lstm(x4)
            h = self._combine(from_directions(out, rev))
            if return_preacts:
                acts += [a, c]
            if tape is not None:
                tape.append((x4, a, c))
            if i < len(self.ffs):
                hp = self.patch(h, self.freq_patches[i])
                pre = self.ffs[i](hp)
                h = torch.tanh(pre)
                if return_preacts:
                    acts.append(pre)
                if tape is not None:
                    tape.append((hp, pre))
        hs = h.sum(2)
        z = self.output(hs)
        if tape is not None:
            tape.append((hs, rev))
        return (z, acts) if return_preacts else z

    def linearize(self, x: Tensor, lengths: Tensor | None = None, return_preacts: bool = False
                  ) -> tuple[Tensor | tuple[Tensor, list[Tensor]], Callable[[Mapping[str, Tensor]], Tensor | tuple[Tensor, list[Tensor]]]]:
        """Forward pass at the current parameters (no autograd) and its hand-written J v; see
        :meth:`hfasr.models.blstm.BLSTM.linearize` (same contract)."""
        w = {n: p.detach().clone() for n, p in self.named_parameters()}
        tape: list = []
        with torch.no_grad():
            out = self._run(x, lengths, return_preacts, tape)

        def lin(W: Tensor, dW: Tensor | None, db: Tensor | None, xin: Tensor, dx: Tensor | None) -> Tensor:
            y = xin.new_zeros(*xin.shape[:-1], W.shape[0]) if dx is None else dx @ W.T
            if dW is not None:
                y = y + xin @ dW.T
            return y if db is None else y + db

        def jvp(tangents: Mapping[str, Tensor]):
            with torch.no_grad():
                rev = tape[-1][1]
                dh: Tensor | None = None
                dacts: list[Tensor] = []
                k = 0
                for i, lstm in enumerate(self.lstms):
                    x4, a, c = tape[k]
                    k += 1
                    dx4 = None if dh is None else to_directions(dh, rev)
                    dout, da, dc = lstm.tangent(x4, a, c, dx4, split_tangents(w, f"lstms.{i}"),
                                                split_tangents(tangents, f"lstms.{i}"), return_preacts)
                    dh = self._combine(from_directions(dout, rev))
                    if return_preacts:
                        dacts += [da, dc]
                    if i < len(self.ffs):
                        hp, pre = tape[k]
                        k += 1
                        dpre = lin(w[f"ffs.{i}.weight"], tangents.get(f"ffs.{i}.weight"), tangents.get(f"ffs.{i}.bias"),
                                   hp, self.patch(dh, self.freq_patches[i]))
                        dh = (1 - torch.tanh(pre) ** 2) * dpre
                        if return_preacts:
                            dacts.append(dpre)
                dz = lin(w["output.weight"], tangents.get("output.weight"), tangents.get("output.bias"), tape[k][0],
                         None if dh is None else dh.sum(2))
                return (dz, dacts) if return_preacts else dz

        return out, jvp

    @staticmethod
    def structural_weights(acts: list[Tensor], lengths: Tensor | None = None) -> list[Tensor]:
        """Matching-loss Hessians for ``acts`` from ``forward(..., return_preacts=True)``
        (layout ``[gates, cell, ff]`` per level, the last level without ``ff``); zero outside
        the sequences (``lengths``) and outside the image on the diagonals."""
        out = []
        for i, a in enumerate(acts):
            kind = i % 3
            if kind == 0:  # gates (i, f_t, f_f, o | g)
                H = a.shape[-1] // 5
                s = torch.sigmoid(a[..., : 4 * H])
                g = torch.tanh(a[..., 4 * H :])
                d = torch.cat([s * (1 - s), 1 - g * g], -1)
            else:  # cell state (tanh) or FF pre-activation (tanh)
                d = 1 - torch.tanh(a) ** 2
            if kind in (0, 1):
                _, B, D, F, _ = a.shape
                T = D - F + 1
                L = torch.full((B,), T, dtype=torch.long) if lengths is None else lengths
                t = (torch.arange(D).unsqueeze(1) - torch.arange(F).unsqueeze(0)).to(a.device)  # (D, F)
                m = (t >= 0) & (t.unsqueeze(0) < L.to(a.device).view(B, 1, 1))  # (B, D, F)
                d = d * m.to(a.dtype)[None, ..., None]
            elif lengths is not None:
                d = d * frame_mask(lengths.to(a.device), a.shape[1]).to(a.dtype)[:, :, None, None]
            out.append(d)
        return out
