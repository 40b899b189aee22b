"""Batched forward-backward over lattices, log semiring and expectation semiring.

All lattices of a batch are merged into one graph (state ids offset per lattice). States are
grouped by topological level; the forward pass visits levels in increasing order and computes
α for all states of a level at once from their incoming arcs (whose sources have lower levels,
so their α is final), the backward pass visits levels in decreasing order using outgoing arcs.
The number of sequential steps is the largest level in the batch (≈ frames + epsilon depth).

Arc log-weights are supplied by the caller (e.g. ``−lm_scale·graph_cost + κ·a[t, pdf]``), so
the same precomputed structure serves every evaluation and every curvature product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hfasr.lattice.tensors import Lattice

NEG_INF = float("-inf")


def scatter_logsumexp(values: Tensor, index: Tensor, size: int) -> Tensor:
    """out[i] = log Σ_{j: index[j]=i} exp(values[j]) (−inf where nothing arrives)."""
    m = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    m = m.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    safe_m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, index, torch.exp(values - safe_m[index]))
    return torch.where(s > 0, safe_m + torch.log(s), torch.full_like(s, NEG_INF))


class LatticeBatch:
    """A batch of :class:`Lattice` objects prepared for repeated forward-backward passes."""

    def __init__(self, lattices: list[Lattice], device: torch.device | str = "cpu", dtype=torch.float64) -> None:
        self.lattices = lattices
        self.device = torch.device(device)
        self.dtype = dtype
        offs, srcs, dsts, frames, pdfs, gcs, finals, utt_state, utt_arc, levels = [], [], [], [], [], [], [], [], [], []
        o = 0
        for b, lat in enumerate(lattices):
            offs.append(o)
            srcs.append(lat.src + o)
            dsts.append(lat.dst + o)
            frames.append(lat.frame)
            pdfs.append(lat.pdf)
            gcs.append(lat.graph_cost.to(dtype))
            finals.append(lat.final_cost.to(dtype))
            utt_state.append(torch.full((lat.num_states,), b, dtype=torch.long))
            utt_arc.append(torch.full((lat.num_arcs,), b, dtype=torch.long))
            levels.append(lat.levels())
            o += lat.num_states
        d = self.device
        self.num_states = o
        self.batch_size = len(lattices)
        self.start = torch.tensor(offs, dtype=torch.long, device=d)
        self.src = torch.cat(srcs).to(d)
        self.dst = torch.cat(dsts).to(d)
        self.frame = torch.cat(frames).to(d)
        self.pdf = torch.cat(pdfs).to(d)
        self.graph_cost = torch.cat(gcs).to(d)
        self.final_cost = torch.cat(finals).to(d)
        self.utt_of_state = torch.cat(utt_state).to(d)
        self.utt_of_arc = torch.cat(utt_arc).to(d)
        self.emitting = self.pdf >= 0
        level = torch.cat(levels)
        self.max_level = int(level.max()) if level.numel() else 0
        lev_dst = level[torch.cat(dsts)] if o else level
        lev_src = level[torch.cat(srcs)] if o else level
        # Arc index lists per level of the destination (forward) and of the source (backward).
        self.fwd_arcs = self._group(lev_dst, self.max_level + 1)
        self.bwd_arcs = self._group(lev_src, self.max_level + 1)
        self.states_at = self._group(level, self.max_level + 1)
        self.is_final = torch.isfinite(self.final_cost)
        self.num_frames = torch.tensor([lat.num_frames for lat in lattices], dtype=torch.long, device=d)

    def _group(self, key: Tensor, n: int) -> list[Tensor]:
        order = torch.argsort(key, stable=True)
        counts = torch.bincount(key, minlength=n).tolist()
        out, p = [], 0
        for c in counts:
            out.append(order[p : p + c].to(self.device))
            p += c
        return out

    # ------------------------------------------------------------------------------ scores
    def arc_scores(self, frame_scores: Tensor, acoustic_scale: float, lm_scale: float = 1.0,
                   extra: Tensor | None = None) -> Tensor:
        """Arc log-weights ``−lm_scale·graph_cost + κ·frame_scores[b, t, pdf] (+ extra)``.

        ``frame_scores``: (B, T, K) per-frame pdf scores (e.g. log-softmax − log-prior).
        """
        w = -lm_scale * self.graph_cost
        e = self.emitting
        sc = frame_scores[self.utt_of_arc[e], self.frame[e], self.pdf[e]].to(self.dtype)
        w = w.clone()
        w[e] = w[e] + acoustic_scale * sc
        if extra is not None:
            w = w + extra
        return w

    def gather_frames(self, frame_values: Tensor) -> Tensor:
        """Per arc ``frame_values[b, t, pdf]`` (0 for epsilon arcs)."""
        out = torch.zeros(self.src.numel(), dtype=self.dtype, device=self.device)
        e = self.emitting
        out[e] = frame_values[self.utt_of_arc[e], self.frame[e], self.pdf[e]].to(self.dtype)
        return out

    def scatter_frames(self, arc_values: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """Sum per-arc values into a (B, T, K) tensor at (utt, frame, pdf) (epsilon arcs dropped)."""
        B, T, K = shape
        out = torch.zeros(B * T * K, dtype=arc_values.dtype, device=self.device)
        e = self.emitting
        idx = (self.utt_of_arc[e] * T + self.frame[e]) * K + self.pdf[e]
        return out.index_add(0, idx, arc_values[e]).view(B, T, K)

    # ------------------------------------------------------------------------------ log semiring
    def forward_backward(self, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(α (S,), β (S,), log Z (B,), arc posteriors γ (A,)) for arc log-weights ``w``."""
        S = self.num_states
        alpha = torch.full((S,), NEG_INF, dtype=self.dtype, device=self.device)
        alpha[self.start] = 0.0
        for L in range(1, self.max_level + 1):
            arcs = self.fwd_arcs[L]
            if arcs.numel() == 0:
                continue
            vals = alpha[self.src[arcs]] + w[arcs]
            acc = scatter_logsumexp(vals, self.dst[arcs], S)
            st = self.states_at[L]
            alpha[st] = acc[st]
        beta = torch.where(self.is_final, -self.final_cost, torch.full_like(self.final_cost, NEG_INF))
        for L in range(self.max_level, -1, -1):
            arcs = self.bwd_arcs[L]
            if arcs.numel() == 0:
                continue
            vals = beta[self.dst[arcs]] + w[arcs]
            acc = scatter_logsumexp(torch.cat([vals, beta[self.states_at[L]]]),
                                    torch.cat([self.src[arcs], self.states_at[L]]), S)
            st = self.states_at[L]
            beta[st] = acc[st]
        logz = beta[self.start]
        post = torch.exp(alpha[self.src] + w + beta[self.dst] - logz[self.utt_of_arc])
        return alpha, beta, logz, post

    # ------------------------------------------------------------------------------ expectation semiring
    def expectations(self, w: Tensor, alpha: Tensor, beta: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Expected additive arc values under the path distribution of ``w``.

        Returns (E_prefix (S,), E_suffix (S,), E_total (B,)): E_prefix[s] = E[Σ c on the path
        before s | path visits s], E_suffix[s] = E[Σ c after s | visits s], E_total = E[Σ c].
        The per-arc conditional expectation is ``E_prefix[src] + c + E_suffix[dst]``.
        """
        S = self.num_states
        ea = torch.zeros(S, dtype=self.dtype, device=self.device)
        for L in range(1, self.max_level + 1):
            arcs = self.fwd_arcs[L]
            if arcs.numel() == 0:
                continue
            d = self.dst[arcs]
            pw = torch.exp(alpha[self.src[arcs]] + w[arcs] - alpha[d])
            pw = torch.nan_to_num(pw, nan=0.0)
            contrib = pw * (ea[self.src[arcs]] + c[arcs])
            acc = torch.zeros(S, dtype=self.dtype, device=self.device).index_add(0, d, contrib)
            st = self.states_at[L]
            ea[st] = acc[st]
        eb = torch.zeros(S, dtype=self.dtype, device=self.device)
        for L in range(self.max_level, -1, -1):
            arcs = self.bwd_arcs[L]
            if arcs.numel() == 0:
                continue
            s = self.src[arcs]
            pw = torch.exp(w[arcs] + beta[self.dst[arcs]] - beta[s])
            pw = torch.nan_to_num(pw, nan=0.0)
            contrib = pw * (c[arcs] + eb[self.dst[arcs]])
            acc = torch.zeros(S, dtype=self.dtype, device=self.device).index_add(0, s, contrib)
            st = self.states_at[L]
            eb[st] = acc[st]
        return ea, eb, eb[self.start]
