#!/usr/bin/env bash
# hfasr recipe for TIMIT (bring your own copy, or --download where the corpus is public).
#   0 download  lhotse's download (only with --download true)
#   1 prepare   lhotse manifests (train / dev / test)
#   2 features  fbank (lilcom) + global CMVN stats (speed perturbation of train)
# Usage: recipes/timit/run.sh --corpus-dir DIR [--stage N] [--stop-stage M]
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
. "$root/tools/parse_options.sh"
marks=$exp/marks
. "$root/tools/recipe.sh"
task=timit

if [ "$download" = true ]; then
  stage_run 0 download hfasr prepare timit --download --out "$data" --config "$here/conf/prepare.yaml"
elif [ -z "$corpus_dir" ]; then
  echo "$0: pass --corpus-dir DIR (your copy of TIMIT) or --download true" >&2; exit 2
else
  stage_run 1 prepare hfasr prepare timit --corpus-dir "$corpus_dir" --out "$data" --config "$here/conf/prepare.yaml" --num-jobs "$nj"
fi
stage_run 2 features hfasr features "$data" --task $task --config "$here/conf/fbank.yaml"
hfasr info "$data"
