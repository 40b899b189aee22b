"""Batched forward-backward over lattices, log semiring and expectation semiring.

All lattices of a batch are merged into one graph (state ids offset per lattice). States are
grouped by topological level; the forward pass visits levels in increasing order and computes
α for all states of a level at once from their incoming arcs (whose sources have lower levels,
so their α is final), the backward pass visits levels in decreasing order using outgoing arcs.
The number of sequential steps is the largest level in the batch (≈ frames + epsilon depth).
Each step touches only its own level: α / β are kept in level order (a level's states are one
contiguous slice) and the level's arcs, pre-sorted by the state they reduce into, are combined
with segmented reductions, so a step costs O(arcs + states of the level) and a whole pass
O(arcs + states), not O(states × levels).

Arc log-weights are supplied by the caller (e.g. ``−lm_scale·graph_cost + κ·a[t, pdf]``), so
the same precomputed structure serves every evaluation and every curvature product. Final-state
costs are graph costs too: the passes weight them by ``−lm_scale·final_cost`` (the ``lm_scale``
given to :meth:`LatticeBatch.forward_backward`, which must be the one used for the arc weights),
as Kaldi's ``ScaleLattice`` scales arc and final weights alike.
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


def _segment_logsumexp(values: Tensor, seg: Tensor, offsets: Tensor, out: Tensor) -> None:
    """``out[i] = log Σ exp(values[offsets[i]:offsets[i+1]])`` (−inf for an empty / all −inf group).

    ``values`` is grouped by output (``seg[j]`` = the group of entry ``j``) and is overwritten.
    Same arithmetic as :func:`scatter_logsumexp` (per-group max, then a sequential sum).
    """
    m = torch.segment_reduce(values, "max", offsets=offsets, unsafe=True)
    m = m.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    e = values.sub_(m.index_select(0, seg)).exp_()
    s = torch.segment_reduce(e, "sum", offsets=offsets, unsafe=True)
    torch.add(m, s.log_(), out=out)


def _no_autograd(*xs: Tensor) -> None:
    if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
        raise RuntimeError("LatticeBatch passes are not differentiable: pass detached tensors "
                           "(the sequence criteria compute their gradients from arc posteriors)")


def _stable_argsort(key: Tensor, bound: int) -> Tensor:
    """Stable argsort of non-negative integer keys below ``bound`` (int32 keys sort ~2x faster)."""
    if bound < 2**31:
        key = key.to(torch.int32)
    return torch.argsort(key, stable=True)


class LatticeBatch:
    """A batch of :class:`Lattice` objects prepared for repeated forward-backward passes.

    Internally the passes keep α, β and the expectation-semiring values in *level order*: the
    states sorted by topological level (stably, so by batch state id within a level), so the
    states of one level are one contiguous slice. Arcs are sorted once by the level-order rank
    of their destination (forward) or source (backward), so each level's arcs are a contiguous
    slice grouped by the state they reduce into, and each level's log-sum-exp / sum is a
    segmented reduction over just that level's arcs into just that level's states (cost per
    level ∝ its arcs and states, not the whole batch). All per-level index tensors and the
    Python slice bounds are built here once; the passes themselves do no host round trips.
    """

    def __init__(self, lattices: list[Lattice], device: torch.device | str = "cpu", dtype=torch.float64) -> None:
        self.lattices = lattices
        self.device = d = torch.device(device)
        self.dtype = dtype
        long = torch.long
        self.batch_size = len(lattices)
        offs, o = [], 0
        for lat in lattices:
            offs.append(o)
            o += lat.num_states
        self.num_states = o

        def cat(xs: list[Tensor], dt: torch.dtype = long) -> Tensor:
            return torch.cat(xs).to(dt) if xs else torch.zeros(0, dtype=dt)

        # everything is assembled on the CPU (where the lattices live) and moved once
        # lattices may be stored compactly (int32 ids, float32 costs: hfasr.lattice.store): the
        # batch is built in int64 / self.dtype
        src = cat([lat.src.long() + o for lat, o in zip(lattices, offs)])
        dst = cat([lat.dst.long() + o for lat, o in zip(lattices, offs)])
        frame = cat([lat.frame for lat in lattices])
        pdf = cat([lat.pdf for lat in lattices])
        utt_of_arc = cat([torch.full((lat.num_arcs,), b, dtype=long)
                          for b, lat in enumerate(lattices)])
        final_cost = cat([lat.final_cost for lat in lattices], dtype)
        level = cat([lat.levels() for lat in lattices])
        emitting = pdf >= 0
        start = torch.tensor(offs, dtype=long)
        self.start = start.to(d)
        self.src = src.to(d)
        self.dst = dst.to(d)
        self.frame = frame.to(d)
        self.pdf = pdf.to(d)
        self.graph_cost = cat([lat.graph_cost for lat in lattices], dtype).to(d)
        self.final_cost = final_cost.to(d)
        self.utt_of_state = cat([torch.full((lat.num_states,), b, dtype=long)
                                 for b, lat in enumerate(lattices)]).to(d)
        self.utt_of_arc = utt_of_arc.to(d)
        self.emitting = emitting.to(d)
        self.is_final = torch.isfinite(self.final_cost)
        self.num_frames = torch.tensor([lat.num_frames for lat in lattices], dtype=long, device=d)
        self.level = level.to(d)  # topological level of each state (within its lattice)
        self.max_level = int(level.max()) if level.numel() else 0
        # emitting arcs as an index list (no boolean masking, hence no device sync, per call) and the
        # largest (utterance, frame, pdf) they address, to check a (B, T, K) frame tensor's shape
        emit = torch.nonzero(emitting).squeeze(1)
        self._emit_idx = emit.to(d)
        self._emit_bound = (-1, -1, -1)
        if emit.numel():  # utt_of_arc is non-decreasing; epsilon arcs have pdf -1
            self._emit_bound = (int(utt_of_arc[emit[-1]]),
                                int(torch.where(emitting, frame, -1).max()), int(pdf.max()))
        self._flat_idx: dict[tuple[int, int, int], Tensor] = {}
        self._build_plan(src, dst, level, start, final_cost)

    def _build_plan(self, src: Tensor, dst: Tensor, level: Tensor, start: Tensor,
                    final_cost: Tensor) -> None:
        """Level-order permutation, per-level slice bounds and per-level index tensors (built on the
        CPU, then moved to the device once)."""
        d = self.device
        S, A, nlev = self.num_states, int(src.numel()), self.max_level + 1
        long = torch.long
        zero = torch.zeros(1, dtype=long)
        sel = torch.index_select
        # level-order rank of every state; the states of level L are ranks soff[L]:soff[L+1]
        order = _stable_argsort(level, nlev)
        ar_s = torch.arange(S)
        rank = torch.empty(S, dtype=long).index_copy_(0, order, ar_s)
        n_lev = torch.bincount(level, minlength=nlev)
        soff = torch.cat([zero, torch.cumsum(n_lev, 0)])
        pos = ar_s - sel(soff, 0, sel(level, 0, order))  # position of each rank within its level
        rsrc, rdst = sel(rank, 0, src), sel(rank, 0, dst)
        f_cnt = torch.bincount(rdst, minlength=S)
        b_cnt = torch.bincount(rsrc, minlength=S)
        # forward: arcs grouped by destination rank (a destination's level is always >= 1)
        f_arc = _stable_argsort(rdst, S)
        f_src = sel(rsrc, 0, f_arc)
        f_seg = sel(sel(pos, 0, rdst), 0, f_arc)  # each arc's destination within its level
        # backward entries: per state (in rank order) its outgoing arcs (in arc order), then one entry
        # for its final weight; entry e < A is arc e, entry A + s the final weight of state s.
        # Placed without sorting the final entries: the j-th arc in source-rank order (source rank r)
        # lands at j + r, the final entry of rank r at (arcs out of ranks <= r) + r.
        by_src = _stable_argsort(rsrc, S)
        src_sorted = sel(rsrc, 0, by_src)
        arc_pos = src_sorted + torch.arange(A)
        fin_pos = torch.cumsum(b_cnt, 0).add_(ar_s)
        b_val = torch.empty(A + S, dtype=long).index_copy_(0, arc_pos, by_src)
        b_val.index_copy_(0, fin_pos, order + A)
        b_tgt = torch.full((A + S,), S, dtype=long)  # S: the sentinel slot (β = 0) of final entries
        b_tgt.index_copy_(0, arc_pos, sel(rdst, 0, by_src))
        b_seg = torch.empty(A + S, dtype=long).index_copy_(0, arc_pos, sel(pos, 0, src_sorted))
        b_seg.index_copy_(0, fin_pos, pos)  # each entry's source within its level
        b_cnt += 1
        # per level: states, forward arcs, backward entries (Python ints for the slicing)
        cum_f = torch.cat([zero, torch.cumsum(f_cnt, 0)])
        cum_b = torch.cat([zero, torch.cumsum(b_cnt, 0)])
        f_lev = sel(cum_f, 0, soff)
        b_lev = sel(cum_b, 0, soff)
        sizes = torch.stack([n_lev, f_lev[1:] - f_lev[:-1], b_lev[1:] - b_lev[:-1]]).tolist()
        self._S_sizes, self._f_sizes, self._b_sizes = sizes
        # per level, the offsets (n_L + 1) of each state's group within the level's arcs / entries,
        # concatenated over the levels: for level L, ranks soff[L] .. soff[L+1] (inclusive)
        blk = torch.repeat_interleave(torch.arange(nlev), n_lev + 1)  # level of each offset
        lev_start = sel(soff, 0, blk)
        gidx = torch.arange(S + nlev) - blk
        f_off = sel(cum_f, 0, gidx) - sel(cum_f, 0, lev_start)
        b_off = sel(cum_b, 0, gidx) - sel(cum_b, 0, lev_start)
        fin = torch.where(torch.isfinite(final_cost), -final_cost,
                          torch.full_like(final_cost, NEG_INF))
        self._rank = rank.to(d)
        self._order = order.to(d)
        alpha_init = torch.full((S,), NEG_INF, dtype=self.dtype).index_fill_(0, sel(rank, 0, start), 0.0)
        self._alpha_init = alpha_init.to(d)
        self._fin = fin.to(d)  # final log-weights at lm_scale 1 (−final_cost, −inf if not final)
        self._beta_init = torch.cat([sel(fin, 0, order), torch.zeros(1, dtype=self.dtype)]).to(d)
        self._f_arc = f_arc.to(d)
        self._b_val = b_val.to(d)
        f_src, f_seg, f_off = f_src.to(d), f_seg.to(d), f_off.to(d)
        b_tgt, b_seg, b_off = b_tgt.to(d), b_seg.to(d), b_off.to(d)
        # per level: (level, index tensors as views); levels without arcs are left out
        p1 = (n_lev + 1).tolist()
        self._fwd_plan = [
            (L, fs, sg, of)
            for L, (k, fs, sg, of) in enumerate(zip(self._f_sizes, f_src.split(self._f_sizes),
                                                    f_seg.split(self._f_sizes), f_off.split(p1)))
            if L >= 1 and k > 0
        ]
        self._bwd_plan = [
            (L, bt, sg, of)
            for L, (n, k, bt, sg, of) in enumerate(zip(self._S_sizes, self._b_sizes,
                                                       b_tgt.split(self._b_sizes),
                                                       b_seg.split(self._b_sizes), b_off.split(p1)))
            if k > n  # some state of the level has an outgoing arc
        ][::-1]

    # ------------------------------------------------------------------------------ scores
    def _frame_index(self, shape: tuple[int, ...]) -> Tensor:
        """Flat index ``(utt·T + frame)·K + pdf`` of each emitting arc into a (B, T, K) tensor
        (cached per shape)."""
        B, T, K = (int(x) for x in shape)
        idx = self._flat_idx.get((B, T, K))
        if idx is None:
            if self._emit_bound[0] >= B or self._emit_bound[1] >= T or self._emit_bound[2] >= K:
                raise IndexError(f"an emitting arc's (utterance, frame, pdf) {self._emit_bound} "
                                 f"lies outside the frame tensor's shape {(B, T, K)}")
            e = self._emit_idx
            idx = (self.utt_of_arc[e] * T + self.frame[e]) * K + self.pdf[e]
            self._flat_idx[(B, T, K)] = idx
        return idx

    def arc_scores(self, frame_scores: Tensor, acoustic_scale: float, lm_scale: float = 1.0,
                   extra: Tensor | None = None) -> Tensor:
        """Arc log-weights ``−lm_scale·graph_cost + κ·frame_scores[b, t, pdf] (+ extra)``.

        ``frame_scores``: (B, T, K) per-frame pdf scores (e.g. log-softmax − log-prior).
        """
        w = -lm_scale * self.graph_cost
        e = self._emit_idx
        idx = self._frame_index(frame_scores.shape)
        sc = frame_scores.reshape(-1).index_select(0, idx).to(self.dtype)
        w.index_copy_(0, e, w.index_select(0, e) + acoustic_scale * sc)
        if extra is not None:
            w = w + extra
        return w

    def final_weights(self, lm_scale: float = 1.0) -> Tensor:
        """Final log-weights ``−lm_scale·final_cost`` (S,), −inf for non-final states."""
        if lm_scale == 1.0:
            return self._fin
        return torch.where(self.is_final, self._fin * lm_scale, self._fin)

    def gather_frames(self, frame_values: Tensor) -> Tensor:
        """Per arc ``frame_values[b, t, pdf]`` (0 for epsilon arcs)."""
        out = torch.zeros(self.src.numel(), dtype=self.dtype, device=self.device)
        v = frame_values.reshape(-1).index_select(0, self._frame_index(frame_values.shape))
        return out.index_copy_(0, self._emit_idx, v.to(self.dtype))

    def scatter_frames(self, arc_values: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """Sum per-arc values into a (B, T, K) tensor at (utt, frame, pdf) (epsilon arcs dropped)."""
        B, T, K = shape
        out = torch.zeros(B * T * K, dtype=arc_values.dtype, device=self.device)
        out.index_add_(0, self._frame_index(shape), arc_values.index_select(0, self._emit_idx))
        return out.view(B, T, K)

    # ------------------------------------------------------------------------------ log semiring
    def forward_backward(self, w: Tensor, lm_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(α (S,), β (S,), log Z (B,), arc posteriors γ (A,)) for arc log-weights ``w``.

        ``lm_scale`` scales the final-state (graph) costs; pass the value given to
        :meth:`arc_scores` so that arc and final graph costs are scaled alike.
        Not differentiable (in-place level updates): the criteria build their gradients from the
        posteriors, so ``w`` must not require grad while autograd is recording.
        """
        _no_autograd(w)
        S = self.num_states
        fin = self.final_weights(lm_scale)
        # α in level order; each level's incoming arcs reduced into that level's states only
        alpha_s = self._alpha_init.clone()
        a_out = alpha_s.split(self._S_sizes)
        w_f = w.index_select(0, self._f_arc).split(self._f_sizes)
        for L, src_l, seg_l, off_l in self._fwd_plan:
            _segment_logsumexp(alpha_s.index_select(0, src_l).add_(w_f[L]), seg_l, off_l, a_out[L])
        # β in level order, slot S a 0 sentinel; per state: outgoing arcs + its final weight
        if lm_scale == 1.0:
            beta_s = self._beta_init.clone()
        else:
            beta_s = torch.cat([fin.index_select(0, self._order), fin.new_zeros(1)])
        b_out = beta_s[:S].split(self._S_sizes)
        w_b = torch.cat([w, fin]).index_select(0, self._b_val).split(self._b_sizes)
        for L, tgt_l, seg_l, off_l in self._bwd_plan:
            _segment_logsumexp(beta_s.index_select(0, tgt_l).add_(w_b[L]), seg_l, off_l, b_out[L])
        alpha = alpha_s.index_select(0, self._rank)
        beta = beta_s.index_select(0, self._rank)
        logz = beta[self.start]
        post = torch.exp(alpha[self.src] + w + beta[self.dst] - logz[self.utt_of_arc])
        return alpha, beta, logz, post

    # ------------------------------------------------------------------------------ expectation semiring
    def expectations(self, w: Tensor, alpha: Tensor, beta: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Expected additive arc values under the path distribution of ``w``.

        Returns (E_prefix (S,), E_suffix (S,), E_total (B,)): E_prefix[s] = E[Σ c on the path
        before s | path visits s], E_suffix[s] = E[Σ c after s | visits s], E_total = E[Σ c].
        The per-arc conditional expectation is ``E_prefix[src] + c + E_suffix[dst]``.
        Not differentiable, like :meth:`forward_backward`.
        """
        _no_autograd(w, alpha, beta, c)
        S = self.num_states
        a_src, a_dst = alpha[self.src], alpha[self.dst]
        # forward: E_prefix[d] = Σ_{a into d} P(a | d) (E_prefix[src] + c[a]),
        # P(a | d) = exp(α_src + w − α_d)
        pw = torch.nan_to_num(torch.exp(a_src + w - a_dst), nan=0.0)
        p_f = pw.index_select(0, self._f_arc).split(self._f_sizes)
        c_f = c.index_select(0, self._f_arc).split(self._f_sizes)
        ea_s = torch.zeros(S, dtype=self.dtype, device=self.device)
        e_out = ea_s.split(self._S_sizes)
        for L, src_l, seg_l, off_l in self._fwd_plan:
            e_out[L].index_add_(0, seg_l, ea_s.index_select(0, src_l).add_(c_f[L]).mul_(p_f[L]))
        # backward: E_suffix[s] = Σ_{a out of s} P(a | s) (c[a] + E_suffix[dst]),
        # P(a | s) = exp(w + β_dst − β_s); the per-state final entries carry P = c = 0
        pw = torch.nan_to_num(torch.exp(w + beta[self.dst] - beta[self.src]), nan=0.0)
        zs = torch.zeros(S, dtype=self.dtype, device=self.device)
        p_b = torch.cat([pw, zs]).index_select(0, self._b_val).split(self._b_sizes)
        c_b = torch.cat([c.to(self.dtype), zs]).index_select(0, self._b_val).split(self._b_sizes)
        eb_s = torch.zeros(S + 1, dtype=self.dtype, device=self.device)
        e_out = eb_s[:S].split(self._S_sizes)
        for L, tgt_l, seg_l, off_l in self._bwd_plan:
            e_out[L].index_add_(0, seg_l, eb_s.index_select(0, tgt_l).add_(c_b[L]).mul_(p_b[L]))
        ea = ea_s.index_select(0, self._rank)
        eb = eb_s.index_select(0, self._rank)
        return ea, eb, eb[self.start]
