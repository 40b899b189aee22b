"""Decoding with a trained GMM-HMM (sanity checks of the GMM dir; scoring lives in hfasr.decode).

``decode_gmm(gmmdir, cuts)`` decodes with ``graph/HCLG.fst`` using Kaldi's LatticeFasterDecoder on
``DecodableAmDiagGmmScaled`` (``gmm-latgen-faster``'s best path) and returns the word strings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hfasr._kaldi import khg, read_fst
from hfasr.errors import DataError
from hfasr.gmm.feats import load_stats_np, transform
from hfasr.gmm.model import GmmModel
from hfasr.lang.graphs import read_symbols


def load_gmm_dir(gmmdir: str | Path):
    """``(config, model, cmvn mean, cmvn std)`` of a GMM dir written by ``hfasr gmm``."""
    from hfasr.config import load_config
    from hfasr.gmm.train import GmmConfig

    gmmdir = Path(gmmdir)
    cfg = load_config(GmmConfig, gmmdir / "config.yaml")
    model = GmmModel.read(gmmdir / "final.mdl", gmmdir / "tree")
    mean = std = None
    if cfg.cmvn != "none":
        mean, std = load_stats_np(gmmdir / "cmvn.pt")
    return cfg, model, mean, std


def decode_gmm(gmmdir: str | Path, cuts: Iterable, acoustic_scale: float = 0.1, beam: float = 13.0,
               max_active: int = 7000, lattice_beam: float = 6.0, progress: bool = False) -> list[tuple[str, str]]:
    """Best-path word sequences ``(cut_id, "W1 W2 ...")`` of ``cuts`` (with features)."""
    gmmdir = Path(gmmdir)
    cfg, model, mean, std = load_gmm_dir(gmmdir)
    hclg_path = gmmdir / "graph" / "HCLG.fst"
    if not hclg_path.is_file():
        raise DataError(f"{hclg_path}: decoding graph not found; rerun `hfasr gmm`")
    hclg = read_fst(hclg_path, "the decoding graph HCLG.fst written by `hfasr gmm`")
    id2word = {i: w for w, i in read_symbols(gmmdir / "graph" / "words.txt").items()}
    decoder = khg.LatticeFasterDecoder(hclg, khg.LatticeFasterDecoderConfig(
        max_active=max_active, beam=beam, lattice_beam=lattice_beam))
    out = []
    for cut in tqdm(cuts, desc="decode", disable=not progress, leave=False):
        x = transform(cut.load_features(), cfg.feature_options, mean, std)
        dec = khg.DecodableAmDiagGmmScaled(am=model.am, tm=model.tm, feats=np.ascontiguousarray(x), scale=acoustic_scale)
        _, _, words, _ = khg.decode_utterance_lattice_faster(decoder=decoder, decodable=dec, trans_model=model.tm,
                                                              utt=cut.id, allow_partial=True)
        out.append((cut.id, " ".join(id2word[w] for w in words if w != 0)))
    return out


def _decode_chunk(args: tuple) -> list[tuple[str, str]]:
    gmmdir, cuts, kwargs = args
    return decode_gmm(gmmdir, cuts, **kwargs)


def decode_gmm_parallel(gmmdir: str | Path, cuts: Iterable, num_jobs: int = 1, **kwargs) -> list[tuple[str, str]]:
    """:func:`decode_gmm` over ``num_jobs`` processes (contiguous chunks of ``cuts``; the result
    in the order of ``cuts``, the same as in one process). A worker that dies is an error
    (``BrokenProcessPool``), never a hang."""
    cuts = list(cuts)
    if num_jobs <= 1 or len(cuts) < 2:
        return decode_gmm(gmmdir, cuts, **kwargs)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    n = min(num_jobs, len(cuts))
    bounds = [round(i * len(cuts) / n) for i in range(n + 1)]
    chunks = [(str(gmmdir), cuts[a:b], {**kwargs, "progress": False}) for a, b in itertools.pairwise(bounds)]
    try:
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
            return [r for part in pool.map(_decode_chunk, chunks) for r in part]
    except BrokenProcessPool as e:
        raise DataError(f"GMM decoding with {gmmdir}: a decoding worker process died ({e})") from e
