"""The GMM-HMM acoustic model and its files in Kaldi's text formats.

kaldi-hmm-gmm 1.1.4 can write a ContextDependency (``tree``) but has no writer or reader for
TransitionModel / AmDiagGmm and no tree reader, so this module writes ``final.mdl`` itself in
Kaldi's text model format -- ``<TransitionModel>`` (as ``TransitionModel::Write``, with
full-precision log-probabilities) followed by the AmDiagGmm (``<DIMENSION> <NUMPDFS>`` and one
``<DiagGMM>`` per pdf) -- which Kaldi's own tools read (``gmm-copy final.mdl``). Reading it back:
the topology is parsed from the file, the (monophone) tree is rebuilt from it and checked
against ``tree`` byte for byte, the transition model's tuples are checked, its probabilities set
through its pickle state and the GMMs are set from their means/variances/weights.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfasr._kaldi import khg
from hfasr.errors import DataError
from hfasr.fileio import atomic_path, write_text


def _vec(v) -> str:
    return "[ " + " ".join(f"{float(x):.9g}" for x in np.asarray(v).ravel()) + " ]"


def _mat(m) -> str:
    m = np.atleast_2d(np.asarray(m))
    rows = ["  " + " ".join(f"{float(x):.9g}" for x in r) for r in m]
    return "[\n" + "\n".join(rows) + " ]"


def monophone_tree(topo: khg.HmmTopology) -> khg.ContextDependency:
    return khg.monophone_context_dependency(phones=topo.phones,
                                            phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())


def tree_text(tree: khg.ContextDependency) -> str:
    with tempfile.TemporaryDirectory() as d:
        tree.write(binary=False, filename=f"{d}/tree")
        return Path(f"{d}/tree").read_text()


def with_log_probs(tm: khg.TransitionModel, log_probs: np.ndarray) -> khg.TransitionModel:
    """A copy of ``tm`` with transition log-probabilities ``log_probs`` (index 0 unused).

    The bindings have no setter, but pickle support: the state holds ``log_probs`` and the
    derived ``non_self_loop_log_probs`` (``log(1 - p_self_loop)`` per transition state, 0 for
    states without a self-loop, as ``TransitionModel::ComputeDerivedOfProbs``).
    """
    lp = [float(x) for x in np.asarray(log_probs, dtype=np.float64)]
    n_tid, n_ts = tm.num_transition_ids, tm.num_transition_states
    if len(lp) != n_tid + 1:
        raise DataError(f"{len(lp) - 1} transition log-probs for a model with {n_tid} transition-ids")
    state = list(tm.__getstate__())
    if len(state) != 8 or len(state[6]) != n_tid + 1 or len(state[7]) != n_ts + 1:
        raise AssertionError("unexpected TransitionModel pickle state (kaldi-hmm-gmm version?)")
    id2state = state[3]
    nsl = [0.0] * (n_ts + 1)
    for tid in range(1, n_tid + 1):
        if tm.is_self_loop(tid):
            nsl[id2state[tid]] = math.log(max(1.0 - math.exp(lp[tid]), 1e-10))
    state[6], state[7] = lp, nsl
    out = khg.TransitionModel.__new__(khg.TransitionModel)
    out.__setstate__(tuple(state))
    return out


@dataclass
class GmmModel:
    """Topology text, tree, transition model and the diagonal GMMs (one per pdf)."""

    topo_text: str
    tree: khg.ContextDependency
    tm: khg.TransitionModel
    am: khg.AmDiagGmm

    @classmethod
    def init_mono(cls, topo_text: str, dim: int, mean: np.ndarray, var: np.ndarray) -> GmmModel:
        """``gmm-init-mono``: one Gaussian per pdf at the global mean/variance."""
        topo = khg.HmmTopology()
        topo.read(topo_text)
        tree = monophone_tree(topo)
        tm = khg.TransitionModel(ctx_dep=tree, hmm_topo=topo)
        am = khg.AmDiagGmm()
        g = khg.DiagGmm(nmix=1, dim=dim)
        g.set_weights(np.ones(1, dtype=np.float32))
        g.set_invvars_and_means(inv_vars=(1.0 / var).astype(np.float32)[None], means=mean.astype(np.float32)[None])
        g.compute_gconsts()
        for _ in range(tree.num_pdfs):
            am.add_pdf(g)
        return cls(topo_text, tree, tm, am)

    @property
    def num_pdfs(self) -> int:
        return self.tm.num_pdfs

    # --------------------------------------------------------------------------------- writing

    def transition_model_text(self) -> str:
        txt = str(self.tm)
        lp = np.asarray(self.tm.log_probs)
        new, n = re.subn(r"<LogProbs>\s*\[[^\]]*\]", "<LogProbs> \n " + _vec(lp).replace("\n", " "), txt)
        if n != 1:
            raise AssertionError("unexpected TransitionModel text")
        return new

    def am_text(self) -> str:
        parts = [f"<DIMENSION> {self.am.dim} <NUMPDFS> {self.am.num_pdfs} "]
        for p in range(self.am.num_pdfs):
            g = self.am.get_pdf(p)
            parts.append(f"<DiagGMM> \n<GCONSTS>  {_vec(g.gconsts)}\n<WEIGHTS>  {_vec(g.weights)}\n"
                         f"<MEANS_INVVARS>  {_mat(g.means_invvars)}\n<INV_VARS>  {_mat(g.inv_vars)}\n</DiagGMM> \n")
        return "".join(parts)

    def write(self, mdl: str | Path, tree: str | Path | None = None) -> None:
        """Write ``mdl`` (TransitionModel + AmDiagGmm, Kaldi text) and optionally ``tree``, each
        atomically (a temporary file renamed over the target)."""
        write_text(mdl, self.transition_model_text() + self.am_text())
        if tree is not None:
            with atomic_path(tree) as tmp:
                self.tree.write(binary=False, filename=str(tmp))

    # --------------------------------------------------------------------------------- reading

    @classmethod
    def read(cls, mdl: str | Path, tree: str | Path | None = None) -> GmmModel:
        """Read a model written by :meth:`write` (monophone trees only); a missing, truncated or
        corrupt ``mdl`` or ``tree`` is a DataError naming the file."""
        mdl = Path(mdl)
        if not mdl.is_file():
            raise DataError(f"model file not found: {mdl}")
        try:
            return cls._read(mdl, tree)
        except (ValueError, IndexError, RuntimeError, KeyError) as e:  # truncated or corrupt text
            raise DataError(f"{mdl}: cannot read the GMM model (truncated or corrupt; rerun `hfasr gmm`): "
                            f"{type(e).__name__}: {str(e)[:200]}") from e

    @classmethod
    def _read(cls, mdl: Path, tree: str | Path | None) -> GmmModel:
        try:
            text = mdl.read_text()
        except UnicodeDecodeError as e:
            raise DataError(f"{mdl}: not a text TransitionModel + AmDiagGmm model written by hfasr") from e
        m = re.search(r"<Topology>.*?</Topology>", text, re.DOTALL)
        lp = re.search(r"<LogProbs>\s*\[([^\]]*)\]", text)
        am_start = text.find("<DIMENSION>")
        if not (text.startswith("<TransitionModel>") and m and lp and am_start > 0):
            raise DataError(f"{mdl}: not a text TransitionModel + AmDiagGmm model written by hfasr")
        topo_text = m.group(0)
        topo = khg.HmmTopology()
        topo.read(topo_text)
        ctx = monophone_tree(topo)
        if tree is not None:
            tree = Path(tree)
            if not tree.is_file():
                raise DataError(f"tree file not found: {tree}")
            if _read_text(tree) != tree_text(ctx):
                raise DataError(f"{tree}: not the monophone tree of {mdl}'s topology (a truncated or "
                                "corrupt file, or a context-dependent tree, which kaldi-hmm-gmm cannot read)")
        tm = khg.TransitionModel(ctx_dep=ctx, hmm_topo=topo)
        mine = re.search(r"<(Triples|Tuples)>.*?</\1>", str(tm), re.DOTALL)
        theirs = re.search(r"<(Triples|Tuples)>.*?</\1>", text, re.DOTALL)
        if mine is None or theirs is None or mine.group(0).split() != theirs.group(0).split():
            raise DataError(f"{mdl}: transition-model tuples do not match a monophone model of its topology")
        tm = with_log_probs(tm, np.array(lp.group(1).split(), dtype=np.float64))
        am = _parse_am(text[am_start:], str(mdl))
        if am.num_pdfs != tm.num_pdfs:
            raise DataError(f"{mdl}: {am.num_pdfs} GMMs for {tm.num_pdfs} pdfs")
        return cls(topo_text, ctx, tm, am)


def _read_text(path: Path) -> str | None:
    """The text of ``path``, or None when it is not UTF-8 text (a corrupt file)."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return None


def split_targets(occs: np.ndarray, target: int, power: float, min_count: float) -> list[int]:
    """Kaldi's ``GetSplitTargets``: Gaussians per pdf ~ occupancy ** power, at most occ / min_count."""
    import heapq

    P = len(occs)
    # max-heap on occ**power / num_components; ties broken by pdf index (deterministic)
    heap = [(-(float(occs[p]) ** power) / (1 + 1e-10), p, 1, float(occs[p]) ** power) for p in range(P)]
    heapq.heapify(heap)
    n = P
    while n < target:
        _, p, k, occ = heap[0]
        if occ == 0.0:
            break  # min-count reached everywhere (Kaldi warns "could not split up to ...")
        heapq.heappop(heap)
        if (k + 1) * min_count >= occs[p]:
            occ = 0.0
        else:
            k += 1
            n += 1
        heapq.heappush(heap, (-occ / (k + 1e-10), p, k, occ))
    targets = [1] * P
    for _, p, k, _ in heap:
        targets[p] = k
    return targets


def split_gmm(g: khg.DiagGmm, target: int, perturb_factor: float, rng: np.random.Generator) -> khg.DiagGmm:
    """Kaldi's ``DiagGmm::Split`` with a seeded generator: repeatedly halve the heaviest
    component and move the two copies' means apart by ``+-perturb_factor`` standard deviations."""
    w = np.asarray(g.weights, dtype=np.float64).copy()
    mi = np.asarray(g.means_invvars, dtype=np.float64).copy()
    iv = np.asarray(g.inv_vars, dtype=np.float64).copy()
    n, dim = mi.shape
    if target <= n:
        return g
    w = np.concatenate([w, np.zeros(target - n)])
    mi = np.concatenate([mi, np.zeros((target - n, dim))])
    iv = np.concatenate([iv, np.zeros((target - n, dim))])
    while n < target:
        k = int(np.argmax(w[:n]))
        w[k] /= 2
        w[n] = w[k]
        r = rng.standard_normal(dim) * np.sqrt(iv[k])
        iv[n] = iv[k]
        mi[n] = mi[k] + perturb_factor * r
        mi[k] = mi[k] - perturb_factor * r
        n += 1
    out = khg.DiagGmm(nmix=target, dim=dim)
    out.set_weights(w.astype(np.float32))
    out.set_invvars_and_means(inv_vars=iv.astype(np.float32), means=(mi / iv).astype(np.float32))
    out.compute_gconsts()
    return out


def split_by_count(am: khg.AmDiagGmm, occs: np.ndarray, target: int, perturb_factor: float, power: float,
                   min_count: float, rng: np.random.Generator) -> khg.AmDiagGmm:
    """Kaldi's ``AmDiagGmm::SplitByCount`` (``gmm-est --mix-up``), reproducible: a new AmDiagGmm."""
    targets = split_targets(np.asarray(occs, dtype=np.float64), target, power, min_count)
    new = khg.AmDiagGmm()
    for p in range(am.num_pdfs):
        g = am.get_pdf(p)
        if g.num_gauss < targets[p]:
            g = split_gmm(g, targets[p], perturb_factor, rng)
        new.add_pdf(g)
    return new


def _parse_am(text: str, where: str) -> khg.AmDiagGmm:
    toks = text.split()
    if toks[0] != "<DIMENSION>" or toks[2] != "<NUMPDFS>":
        raise DataError(f"{where}: malformed AmDiagGmm header")
    dim, npdf = int(toks[1]), int(toks[3])
    pos = 4

    def expect(tok: str) -> None:
        nonlocal pos
        if toks[pos] != tok:
            raise DataError(f"{where}: expected {tok}, found {toks[pos]!r}")
        pos += 1

    def numbers() -> np.ndarray:
        nonlocal pos
        expect("[")
        end = toks.index("]", pos)
        v = np.array(toks[pos:end], dtype=np.float64)
        pos = end + 1
        return v

    am = khg.AmDiagGmm()
    for p in range(npdf):
        expect("<DiagGMM>")
        if toks[pos] == "<GCONSTS>":
            pos += 1
            numbers()
        expect("<WEIGHTS>")
        w = numbers()
        expect("<MEANS_INVVARS>")
        mi = numbers().reshape(len(w), dim)
        expect("<INV_VARS>")
        iv = numbers().reshape(len(w), dim)
        expect("</DiagGMM>")
        g = khg.DiagGmm(nmix=len(w), dim=dim)
        g.set_weights(w.astype(np.float32))
        g.set_invvars_and_means(inv_vars=iv.astype(np.float32), means=(mi / iv).astype(np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return am
