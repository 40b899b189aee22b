"""``hfasr ctc-decode``: decode a split with a CTC model (greedy and TLG) and score it.

Inputs: ``--model EXP/final.pt`` (``hfasr train --criterion ctc``; it holds its token table),
the split's features (``--data-dir``, ``--task``, ``--split``) and ``--lang`` (the lang dir of
``hfasr lang``: ``words.txt``, ``G.fst`` and, for phone tokens, ``lexicon.txt``). The graph
``TLG.fst`` (``hfasr.lang.ctc``: CTC topology ∘ token lexicon ∘ G) is built from the model's
tokens in ``--graph-dir`` (default ``<model dir>/graph``) unless it is there already.

Writes ``OUT/`` as ``hfasr decode`` does — ``hyp.txt``, ``ref.txt``, ``wer.txt`` (Kaldi's
``%WER`` line, ``%SER``, the 95% bootstrap CI; ``hfasr results`` lists it), ``errs-SET.txt``
and, with ``--dev-split``, ``sweep.txt`` — for the TLG decode, and ``OUT/greedy/`` for greedy
decoding (argmax per frame; phones become words by lexicon segmentation): ``hyp.txt``,
``wer.txt``, ``errs-SET.txt``, and the token-level ``tokens_hyp.txt``, ``tokens_ref.txt``,
``ter.txt`` (``%PER`` for phones, ``%CER`` for characters).

Scales: the decoder's cost is ``graph_cost − acoustic_scale · log p``; ``--acoustic-scale``
(default 1), or the best ``1/LMWT`` for LMWT in ``--lm-weights`` (with ``--word-penalties``)
by WER on ``--dev-split``. ``--blank-penalty`` is subtracted from the blank's log-probability
before decoding (greedy and TLG). The TLG sweep, decode and scoring are
:func:`hfasr.decode.pipeline.decode_and_score`, as in ``hfasr decode``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "decode a split with a CTC model: greedy and TLG (LM-weight sweep on dev), WER and PER/CER"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="final.pt of hfasr train --criterion ctc")
    p.add_argument("--data-dir", type=Path, required=True, help="data dir of hfasr prepare/features")
    p.add_argument("--task", required=True, help="task name, e.g. fsdd_conn")
    p.add_argument("--split", default="test", help="split to decode (default test)")
    p.add_argument("--lang", type=Path, required=True, help="lang dir (words.txt, G.fst, lexicon.txt)")
    p.add_argument("--out", type=Path, required=True, help="output dir (hyp.txt, wer.txt, greedy/, ...)")
    p.add_argument("--set", dest="set_name", help="set name (errs-SET.txt; default: the split)")
    p.add_argument("--graph-dir", type=Path, help="where TLG.fst is (built if missing); default MODEL_DIR/graph")
    p.add_argument("--rebuild-graph", action="store_true", help="rebuild TLG.fst even if it exists")
    p.add_argument("--no-graph", action="store_true", help="greedy decoding only")
    p.add_argument("--config", type=Path, help="YAML with decoder options (DecoderConfig)")
    p.add_argument("--acoustic-scale", type=float, default=1.0, help="acoustic scale (no sweep)")
    p.add_argument("--dev-split", help="split on which the LM weight / word penalty are chosen (e.g. dev)")
    p.add_argument("--lm-weights", default="0.3,0.5,1,2", help="comma-separated LM weights of the dev sweep")
    p.add_argument("--word-penalties", default="0,0.5,1", help="comma-separated word penalties of the dev sweep")
    p.add_argument("--blank-penalty", type=float, default=0.0, help="subtracted from the blank log-probability")
    p.add_argument("--beam", type=float, help="search beam (overrides the config)")
    p.add_argument("--max-active", type=int, help="max active states (overrides the config)")
    p.add_argument("--num-workers", type=int, default=0, help="decoding processes (0: in process)")
    p.add_argument("--num-threads", type=int, default=1, help="torch threads")


def load_ctc_model(path: Path, lang_dir: Path | None):
    """``(model, TokenTable, prons)`` of a CTC ``final.pt``; phone tokens take the lexicon of
    ``lang_dir``. DataError if the checkpoint has no token table."""
    from hfasr.criteria.ctc import TokenTable
    from hfasr.errors import DataError
    from hfasr.lang.lexicon import Lexicon
    from hfasr.models import build_model, load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt.get("criterion") != "ctc" or "tokens" not in ckpt:
        raise DataError(f"{path}: not a CTC model (no token table); train one with hfasr train --criterion ctc")
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    tokens, unit = list(ckpt["tokens"]), ckpt.get("unit", "char")
    prons = None
    if unit == "phone":
        if lang_dir is None:
            raise DataError(f"{path}: a phone CTC model needs the lang dir's lexicon (--lang)")
        prons = Lexicon.read(lang_dir / "lexicon.txt").prons
        table = TokenTable(tokens[1:], "phone", lexicon=prons)
    else:
        table = TokenTable(tokens[1:], "char", word_boundary=ckpt.get("word_boundary"))
    return model, table, prons


def split_log_probs(model, data_dir: Path, task: str, split: str, desc: str = "") -> tuple[list, list, dict]:
    """Cut ids, per-utterance CTC log-probabilities (T', K) and transcripts of a split."""
    import torch
    from tqdm import tqdm

    from hfasr.data.corpora import load_cuts, manifest_path
    from hfasr.errors import DataError
    from hfasr.models import compute_loglikes

    m = manifest_path(data_dir, task, split, "feats")
    if not m.is_file():
        raise DataError(f"{m}: features manifest not found; run `hfasr features` first")
    ids, lps, texts = [], [], {}
    for c in tqdm(load_cuts(m), desc=desc or f"ctc {task}/{split}", disable=None, leave=False):
        ids.append(c.id)
        lps.append(compute_loglikes(model, torch.from_numpy(c.load_features()), name=f"cut '{c.id}'"))
        texts[c.id] = " ".join(s.text or "" for s in c.supervisions).split()
    return ids, lps, texts


def run(args: argparse.Namespace) -> None:
    import torch

    from hfasr.config import load_config
    from hfasr.decode import DecoderConfig
    from hfasr.fileio import DirLock, staged_dir

    torch.set_num_threads(args.num_threads)
    cfg = load_config(DecoderConfig, args.config, overrides={"beam": args.beam, "max_active": args.max_active})
    with DirLock(args.out, "hfasr ctc-decode"), staged_dir(args.out) as stage:
        decode_into(args, stage, cfg)


def decode_into(args: argparse.Namespace, out: Path, cfg) -> None:
    """Decode and score as :func:`run` says, writing into ``out`` (the staging dir of ``--out``:
    the results are published together once all are written)."""
    from hfasr.decode import (
        DevSet,
        bootstrap_ci,
        decode_and_score,
        parse_floats,
        read_graph,
        read_id2word,
        score,
        write_results,
        write_text,
    )
    from hfasr.decode.ctc import (
        ctc_tid2pdf,
        greedy_ids,
        penalize_blank,
        token_error_line,
        tokens_to_words,
    )
    from hfasr.fileio import write_text as write_file

    set_name = args.set_name or args.split
    model, table, prons = load_ctc_model(args.model, args.lang)
    ids, lps, refs = split_log_probs(model, args.data_dir, args.task, args.split)
    lps = [penalize_blank(x, args.blank_penalty) for x in lps]
    write_text(out / "ref.txt", refs)

    # greedy
    gdir = out / "greedy"
    units = {c: table.decode(greedy_ids(x)) for c, x in zip(ids, lps)}
    hyps = {c: tokens_to_words(u, table.unit, table.word_boundary, prons) for c, u in units.items()}
    write_text(gdir / "hyp.txt", hyps)
    g_res = score(refs, hyps)
    write_results(gdir, set_name, g_res, bootstrap_ci(g_res))
    tok_refs = {c: table.units(" ".join(w)) for c, w in refs.items()}
    write_text(gdir / "tokens_ref.txt", tok_refs)
    write_text(gdir / "tokens_hyp.txt", units)
    ter = token_error_line(score(tok_refs, units), "PER" if table.unit == "phone" else "CER")
    write_file(gdir / "ter.txt", ter + "\n")
    print(f"greedy: {g_res.wer_line()}  {ter}")
    if args.no_graph:
        return

    # TLG
    graph_dir = args.graph_dir or args.model.parent / "graph"
    tlg = graph_dir / "TLG.fst"
    if args.rebuild_graph or not tlg.is_file():
        from hfasr.lang.ctc import build_ctc_graph

        build_ctc_graph(args.lang, table.tokens, table.unit, graph_dir, word_boundary=table.word_boundary,
                        prons=prons)
    id2word = read_id2word(args.lang / "words.txt")
    graph = read_graph(tlg)
    dev = None
    if args.dev_split:
        dev_ids, dev_lps, dev_refs = split_log_probs(model, args.data_dir, args.task, args.dev_split)
        dev_lps = [penalize_blank(x, args.blank_penalty) for x in dev_lps]
        dev = DevSet(dev_ids, dev_lps, dev_refs, name=args.dev_split)
    decode_and_score(graph, ctc_tid2pdf(len(table)), id2word, ids, lps, out, set_name, refs=refs, dev=dev,
                     acoustic_scale=args.acoustic_scale,
                     lm_weights=parse_floats(args.lm_weights, "--lm-weights") if dev else None,
                     word_penalties=parse_floats(args.word_penalties, "--word-penalties") if dev else (0.0,),
                     config=cfg, num_workers=args.num_workers, desc=f"TLG {set_name}",
                     note_details=f"blank penalty {args.blank_penalty:g}", note_prefix=f"TLG {tlg}; ",
                     extra_comments=[f"greedy: {g_res.wer_line()} {ter}"])
