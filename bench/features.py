#!/usr/bin/env python
"""Real-time factors of speech synthesis (synth corpus) and fbank extraction.

Usage: .venv/bin/python bench/features.py [--shared ../shared/data] [--threads 1]

RTF = processing time / audio duration (lower is faster); "x real time" = 1 / RTF. Measured in
one process, side by side on the same machine:
- synthesis: hfasr.data.synth.synthesize over a fixed set of alphanumeric prompts (eSpeak NG
  at 22.05 kHz, + resampling to 16 kHz and noise as in the corpus generator);
- fbank: lhotse Fbank (40 bins) over FSDD and yesno recordings (8 kHz) and synthesized 16 kHz
  audio, with and without writing lilcom archives (the full `hfasr features` path).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def bench_synthesis(n: int = 40) -> tuple[float, float, float, list[np.ndarray]]:
    """Synthesize ``n`` corpus utterances; return (eSpeak-only s, full-pipeline s, audio s, audio)."""
    from hfasr.data.synth import (
        SynthConfig,
        load_vocabulary,
        plan_utterance,
        render_utterance,
        synthesize,
    )

    cfg = SynthConfig()
    vocab = load_vocabulary(cfg.vocab)
    plans = [plan_utterance(cfg, vocab, "train", i) for i in range(n)]
    t0 = time.perf_counter()
    for p in plans:
        synthesize(p.text, p.speaker, p.rate, p.pitch)
    t_espeak = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio = [render_utterance(p, cfg.sampling_rate, cfg.peak_level) for p in plans]
    t_full = time.perf_counter() - t0
    dur = sum(len(a) for a in audio) / cfg.sampling_rate
    return t_espeak, t_full, dur, audio


def bench_fbank(signals: list[tuple[np.ndarray, int]], store: bool) -> tuple[float, float]:
    from lhotse import LilcomChunkyWriter

    from hfasr.data.features import FeatureConfig, make_extractor

    cfg = FeatureConfig()
    extractors = {}
    dur = sum(len(a) / sr for a, sr in signals)
    with tempfile.TemporaryDirectory() as d:
        writer = LilcomChunkyWriter(Path(d) / "f") if store else None
        t0 = time.perf_counter()
        for i, (a, sr) in enumerate(signals):
            ex = extractors.setdefault(sr, make_extractor(cfg, sr))
            feats = ex.extract(a, sr)
            if writer is not None:
                writer.write(f"u{i}", feats)
        if writer is not None:
            writer.close()
        return time.perf_counter() - t0, dur


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-fsdd", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    t_espeak, t_full, dur, synth_audio = bench_synthesis()
    rows.append(("synthesis: eSpeak NG only (22.05 kHz)", t_espeak, dur))
    rows.append(("synthesis: corpus pipeline (16 kHz + noise)", t_full, dur))

    fsdd = sorted((args.shared / "fsdd" / "recordings").glob("*.wav"))
    random.Random(0).shuffle(fsdd)
    fsdd_sig = [sf.read(str(p), dtype="float32") for p in fsdd[: args.n_fsdd]]
    yesno_sig = [sf.read(str(p), dtype="float32") for p in sorted((args.shared / "yesno" / "waves_yesno").glob("*.wav"))]
    synth_sig = [(np.asarray(a, dtype=np.float32) / (32768.0 if a.dtype == np.int16 else 1.0), 16000) for a in synth_audio]
    for name, sig in (("FSDD 8 kHz", fsdd_sig), ("yesno 8 kHz", yesno_sig), ("synth 16 kHz", synth_sig)):
        t, d = bench_fbank(sig, store=False)
        rows.append((f"fbank 40 bins, {name}", t, d))
        t, d = bench_fbank(sig, store=True)
        rows.append((f"fbank 40 bins + lilcom write, {name}", t, d))

    print(f"threads={args.threads}")
    print(f"{'what':45s} {'audio s':>9s} {'cpu s':>8s} {'RTF':>8s} {'x realtime':>11s}")
    for name, t, d in rows:
        print(f"{name:45s} {d:9.1f} {t:8.2f} {t / d:8.4f} {d / t:11.1f}")


if __name__ == "__main__":
    main()
