#!/usr/bin/env bash
# hfasr recipe for LibriSpeech: the hybrid pipeline GMM -> CE DNN -> HF-sMBR on any LibriSpeech
# parts (benchmark: mini LibriSpeech's train-clean-5, 5.3 h, with dev-clean-2 as test if given).
#   0 download  lhotse's download of mini LibriSpeech (only with --download true)
#   1 prepare   lhotse manifests: train = the train-* parts less 3 speakers held out as dev;
#               test = the dev-*/test-* parts given (else 3 more held-out speakers);
#               data/librispeech_lexicon.txt (--lexicon FILE if given, then CMUdict)
#   2 features  fbank (lilcom) + global CMVN stats
#   3-9         lang (training-transcript vocabulary, 3-gram G on the training transcripts or
#               --arpa FILE), monophone GMM, CE DNN (streamed frames), decoding, lattices,
#               HF-sMBR (--seq-runs), the WER table (tools/hybrid.sh)
#   10 parts    the %WER of every test part (dev-clean-2, test-clean, test-other ...) of each
#               system: exp/results_parts.md
# conf/ holds the settings (see the comments in each file); all choices on the dev speakers.
# Usage: recipes/librispeech/run.sh --corpus-dir DIR [--stage N] [--stop-stage M] [--arpa LM.arpa]
#        [--lexicon FILE] [--seq-runs "smbr_hf"]
#   DIR holds LibriSpeech/<part>/<speaker>/<chapter>/ (or the <part> folders themselves).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
stage=0
stop_stage=100
nj=2
corpus_dir=""
download=false
data=$here/data
exp=$here/exp
conf=$here/conf
arpa=""       # an ARPA LM for G (e.g. LibriSpeech's 3-gram.pruned.1e-7.arpa); "" = 3-gram on the training transcripts
lexicon=""    # a lexicon file (e.g. librispeech-lexicon.txt) before CMUdict; "" = CMUdict only
seq_runs="smbr_hf"
# decoding a 5.5k-word trigram graph in Python is slow (GMM: real-time factor 0.12 at beam 13 /
# max-active 7000, 0.03 at 11 / 3000 on an idle core, 4x that on the loaded 2-core machine;
# bench/librispeech.sh): narrower beams, 2 processes,
# LM-weight sweeps on the dev speakers (the training-transcript LM is weak: the CE model's dev
# %WER at LMWT 3/4/5/7/9 was 66.9/63.6/62.6/63.9/67.4; the GMM's at 9/12/15 71.9/74.8/78.3)
lm_weights="4,5,6,7"
word_penalties="0,1"
gmm_lm_weights="5,7,9"
gmm_decode_opts="--beam 11 --max-active 3000 --decode-jobs $nj"
decode_opts="--beam 11 --max-active 3000"
# denominator lattices over the 5.5k-word unigram graph: Python's LatticeSimpleDecoder has no
# max-active; at beam 13 / lattice beam 6 it runs at RTF 0.25 (0.86 loaded: > 1 h for train) with
# 134 arcs per frame (~4 GB of lattices for train), at 10 / 4 at RTF 0.08 with 38.5 arcs per frame
lattice_opts="--beam 10 --lattice-beam 4"
. "$root/tools/parse_options.sh"
marks=$exp/marks
. "$root/tools/recipe.sh"
task=librispeech

prep_conf=$conf/prepare.yaml
if [ -n "$lexicon" ]; then  # conf/prepare.yaml with the given lexicon
  mkdir -p "$exp"; prep_conf=$exp/prepare.yaml
  sed "s|^lexicon:.*|lexicon: $(realpath "$lexicon")|" "$conf/prepare.yaml" > "$prep_conf"
fi
prep_opts=(--out "$data" --config "$prep_conf" --num-jobs "$nj")
if [ "$download" = true ]; then
  stage_run 0 download hfasr prepare mini_librispeech --download "${prep_opts[@]}"
elif [ -z "$corpus_dir" ]; then
  echo "$0: pass --corpus-dir DIR (your copy of LibriSpeech) or --download true" >&2; exit 2
else
  stage_run 1 prepare hfasr prepare mini_librispeech --corpus-dir "$corpus_dir" "${prep_opts[@]}"
fi
stage_run 2 features hfasr features "$data" --task $task --config "$conf/fbank.yaml"
. "$root/tools/hybrid.sh"
if [ 10 -ge "$stage" ] && [ 10 -le "$stop_stage" ]; then
  dirs=("$exp/gmm/decode_test" "$exp/dnn_ce/decode_test")
  for run in $seq_runs; do dirs+=("$exp/dnn_$run/decode_test"); done
  "$root/tools/score_parts.sh" "$data/${task}_test_parts.txt" "$exp/dnn_ce/ref_test.txt" "$exp/results_parts.md" "${dirs[@]}"
fi
