#!/usr/bin/env bash
# The LibriSpeech benchmark of README "Results" (issue 16 item 4): the recipe on a local copy of
# mini LibriSpeech's train-clean-5 with HFASR_RESOURCE_LOG, then
#   - the peak RSS and wall time of every hfasr command (from the resource log),
#   - bytes per arc and arcs per frame of the training lattices,
#   - the wider dev LM-weight sweeps behind the recipe's choices (CE model: 3-9; GMM: 5-15),
#   - the decoding speed probes behind its beams (GMM best path at 13/7000 vs 11/3000, lattice
#     generation at 13/6 vs 10/4, on the first dev utterances).
# Usage: bench/librispeech.sh CORPUS_DIR [OUT]   (OUT default /tmp/hfasr_librispeech)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
corpus=$1; out=${2:-/tmp/hfasr_librispeech}
venv=$("$root/tools/setup-env.sh"); export PATH="$venv/bin:$PATH"
mkdir -p "$out"
r=$root/recipes/librispeech
HFASR_RESOURCE_LOG=$out/resources.jsonl "$r/run.sh" --corpus-dir "$corpus"
d=$r/exp/dnn_ce
hfasr decode --loglikes "$d/loglikes_test.pt" --ref "$d/ref_test.txt" --dev-loglikes "$d/loglikes_dev.pt" \
  --dev-ref "$d/ref_dev.txt" --graph-dir "$r/exp/gmm/graph" --model-dir "$r/exp/gmm" --out "$out/ce_wide_sweep" \
  --num-workers 2 --lm-weights 3,4,5,6,7,9 --word-penalties 0 --beam 11 --max-active 3000 --quiet
cp -r "$r/exp/gmm" "$out/gmm_wide" && rm -rf "$out/gmm_wide/decode_test"
hfasr gmm --data-dir "$r/data" --task librispeech --lang "$r/exp/lang" --out "$out/gmm_wide" --decode-only \
  --decode-split test --lm-weights 5,7,9,12,15 --beam 11 --max-active 3000 --decode-jobs 2 --quiet
python - "$root" "$r" "$out" <<'PY'
import json, sys, time
from pathlib import Path
import numpy as np, torch
root, r, out = map(Path, sys.argv[1:])
sys.path.insert(0, str(root / "bench"))
from scale import lattice_stats
from hfasr.data.corpora import load_cuts
from hfasr.decode.decoder import decode_lattice, lattice_to_tensors, read_graph
from hfasr.gmm.decode import decode_gmm
from hfasr.gmm.model import GmmModel
print("| command | wall s | peak RSS MB |\n|---|---:|---:|")
for line in (out / "resources.jsonl").read_text().splitlines():
    x = json.loads(line)
    print(f"| {' '.join(x['argv'][:3])[:60]} | {x['wall_s']:.0f} | {max(x['max_rss_mb'], x['max_rss_children_mb']):.0f} |")
print("lattices:", lattice_stats(r))
cuts = list(load_cuts(r / "data" / "librispeech_feats_dev.jsonl.gz"))[:4]
dur = sum(c.duration for c in cuts)
for beam, ma in ((13.0, 7000), (11.0, 3000)):
    t = time.time(); decode_gmm(r / "exp" / "gmm", cuts, acoustic_scale=1 / 7, beam=beam, max_active=ma)
    print(f"GMM best path beam {beam} max-active {ma}: RTF {(time.time() - t) / dur:.2f}")
g = read_graph(r / "exp" / "lats" / "graph_weak" / "HCLG.fst")
tid2pdf = np.asarray(GmmModel.read(r / "exp" / "gmm" / "final.mdl").tm.transition_id_to_pdf_array())
ll = torch.load(r / "exp" / "dnn_ce" / "loglikes_dev.pt", weights_only=False)["loglikes"][0]
ll = np.asarray(ll)[:300]
for beam, lb in ((13.0, 6.0), (10.0, 4.0)):
    t = time.time(); lt = lattice_to_tensors(decode_lattice(g, tid2pdf, ll, 0.1, beam=beam, lattice_beam=lb).lattice)
    print(f"lattice beam {beam} / {lb}: RTF {(time.time() - t) / (ll.shape[0] * 0.01):.2f}, "
          f"{lt.num_arcs / ll.shape[0]:.1f} arcs per frame")
PY
