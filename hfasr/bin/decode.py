"""``hfasr decode``: decode precomputed pdf log-likelihoods with an HCLG graph, then score.

Inputs: ``--loglikes FILE`` (``torch.save``'d ``{"cut_ids": [str], "loglikes":
[FloatTensor(T, num_pdfs)]}``, the pdf log-likelihoods ``log p(pdf|x) - log prior(pdf)``),
``--graph-dir`` (``HCLG.fst``, ``words.txt``), ``--model-dir`` (``final.mdl``, whose transition
model maps transition-ids to pdfs). Writes ``OUT/hyp.txt``; with ``--ref`` also ``ref.txt``,
``wer.txt`` and ``errs-SET.txt`` (see ``hfasr score``).

The acoustic scale is ``--acoustic-scale`` or, with ``--dev-loglikes``/``--dev-ref``, the best
of ``1/LMWT`` for LMWT in ``--lm-weights`` by dev WER (``OUT/sweep.txt`` lists every point).
Sweep, decode and scoring are :func:`hfasr.decode.pipeline.decode_and_score`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hfasr.errors import DataError, HfasrError

HELP = "decode pdf log-likelihoods with HCLG (optional LM-weight sweep on dev) and score"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loglikes", type=Path, required=True, help="log-likelihood file of the set")
    p.add_argument("--graph-dir", type=Path, required=True, help="dir with HCLG.fst and words.txt")
    p.add_argument("--model-dir", type=Path, required=True, help="dir with final.mdl")
    p.add_argument("--out", type=Path, required=True, help="output dir (hyp.txt, wer.txt, ...)")
    p.add_argument("--set", dest="set_name", default="test", help="set name (errs-SET.txt)")
    p.add_argument("--ref", type=Path, help="reference Kaldi text of the set (scores if given)")
    p.add_argument("--config", type=Path, help="YAML with decoder options (DecoderConfig)")
    p.add_argument("--acoustic-scale", type=float, default=0.1, help="acoustic scale (no sweep)")
    p.add_argument("--dev-loglikes", type=Path, help="dev log-likelihoods for the LM-weight sweep")
    p.add_argument("--dev-ref", type=Path, help="dev reference text for the sweep")
    p.add_argument("--lm-weights", default=None,
                   help="comma-separated LM weights of the sweep (default 5,7,9,10,11,13,15,17)")
    p.add_argument("--word-penalties", default="0,0.5,1",
                   help="comma-separated word insertion penalties swept on dev with the LM weights")
    p.add_argument("--beam", type=float, help="search beam (overrides the config)")
    p.add_argument("--max-active", type=int, help="max active states (overrides the config)")
    p.add_argument("--num-workers", type=int, default=0, help="decoding processes (0: in process)")
    p.add_argument("--mode", choices=["strict", "all", "present"], default="strict",
                   help="scoring of reference utterances without a hypothesis (see hfasr score)")


def load_loglikes(path: Path) -> tuple[list[str], list]:
    """Read a log-likelihood file (:func:`hfasr.fileio.load_torch`: a tampered file's code never
    runs); DataError naming the file if missing, truncated or malformed, and naming the cut if
    its log-likelihoods hold a non-finite value (a NaN would decode as all deletions)."""
    import torch

    from hfasr.fileio import load_torch

    if not path.is_file():
        raise DataError(f"log-likelihood file not found: {path}")
    d = load_torch(path, "a log-likelihood file written by hfasr loglikes", keys=("cut_ids", "loglikes"))
    if not isinstance(d["cut_ids"], (list, tuple)) or not isinstance(d["loglikes"], (list, tuple)):
        raise DataError(f"{path}: 'cut_ids' and 'loglikes' must be lists (a file of hfasr loglikes)")
    ids, lls = list(d["cut_ids"]), list(d["loglikes"])
    if len(ids) != len(lls):
        raise DataError(f"{path}: {len(ids)} cut ids but {len(lls)} log-likelihood matrices")
    for c, x in zip(ids, lls):
        if not isinstance(c, str):
            raise DataError(f"{path}: cut id {c!r} is not a string")
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise DataError(f"{path}: log-likelihoods of '{c}' are not a (T, num_pdfs) tensor")
        if not x.is_floating_point():
            raise DataError(f"{path}: log-likelihoods of '{c}' are not a float tensor ({x.dtype})")
        if not bool(torch.isfinite(x).all()):
            frame = int((~torch.isfinite(x)).any(1).nonzero()[0])
            raise DataError(f"{path}: log-likelihoods of cut '{c}' are not finite (frame {frame}); "
                            "check its features and rerun `hfasr loglikes`")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate cut ids")
    return ids, lls


def load_tid2pdf(model_dir: Path):
    """``TransitionModel.transition_id_to_pdf_array()`` of ``model_dir/final.mdl``."""
    import torch

    from hfasr.gmm.model import GmmModel  # the hfasr text model format

    m = GmmModel.read(model_dir / "final.mdl")
    return torch.tensor(m.tm.transition_id_to_pdf_array(), dtype=torch.long)


def run(args: argparse.Namespace) -> None:
    from hfasr.fileio import DirLock

    with DirLock(args.out, "hfasr decode"):  # one writer per output dir
        _run(args)


def _run(args: argparse.Namespace) -> None:
    from hfasr.config import load_config
    from hfasr.decode import DecoderConfig, DevSet, decode_and_score, parse_floats, read_id2word
    from hfasr.decode.score import read_text

    cfg = load_config(DecoderConfig, args.config,
                      overrides={"beam": args.beam, "max_active": args.max_active})
    graph = args.graph_dir / "HCLG.fst"
    if not graph.is_file():
        raise DataError(f"decoding graph not found: {graph}")
    id2word = read_id2word(args.graph_dir / "words.txt")
    tid2pdf = load_tid2pdf(args.model_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    dev, lmwts, wips = None, None, [0.0]
    if args.dev_loglikes is not None:
        if args.dev_ref is None:
            raise HfasrError("--dev-loglikes needs --dev-ref")
        lmwts = parse_floats(args.lm_weights, "--lm-weights") if args.lm_weights else None
        dev_ids, dev_ll = load_loglikes(args.dev_loglikes)
        wips = parse_floats(args.word_penalties, "--word-penalties")
        dev = DevSet(dev_ids, dev_ll, read_text(args.dev_ref))
    ids, lls = load_loglikes(args.loglikes)
    refs = read_text(args.ref) if args.ref is not None else None
    decode_and_score(str(graph), tid2pdf, id2word, ids, lls, args.out, args.set_name, refs=refs,
                     dev=dev, acoustic_scale=args.acoustic_scale, lm_weights=lmwts,
                     word_penalties=wips, config=cfg, num_workers=args.num_workers, mode=args.mode,
                     logger=log)
