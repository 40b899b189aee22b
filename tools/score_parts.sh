#!/usr/bin/env bash
# score_parts.sh PARTS REF OUT_MD DECODE_DIR...: the %WER of each test part (LibriSpeech's
# dev-clean-2, test-clean, ...) of every decode dir, as a Markdown table.
#   PARTS       "cut-id part" lines (data/<task>_test_parts.txt, written by hfasr prepare)
#   REF         the test set's reference text (Kaldi format; the cut ids of PARTS)
#   DECODE_DIR  a decode dir with hyp.txt (e.g. exp/dnn_ce/decode_test); its parts go to DIR/parts/<part>/
set -euo pipefail
parts=$1 ref=$2 out=$3; shift 3
names=$(awk '{print $2}' "$parts" | sort -u)
{
  echo "| system | $(echo $names | sed 's/ / | /g') |"
  echo "|---$(for _ in $names; do printf '|---:'; done)|"
  for d in "$@"; do
    [ -f "$d/hyp.txt" ] || { echo "$0: $d/hyp.txt not found" >&2; exit 1; }
    row="| $(basename "$(dirname "$d")")"
    for p in $names; do
      pd=$d/parts/$p; mkdir -p "$pd"
      awk -v p="$p" 'NR==FNR { if ($2 == p) keep[$1] = 1; next } ($1 in keep)' "$parts" "$ref" > "$pd/ref.txt"
      awk 'NR==FNR { keep[$1] = 1; next } ($1 in keep)' "$pd/ref.txt" "$d/hyp.txt" > "$pd/hyp.txt"
      hfasr score --ref "$pd/ref.txt" --hyp "$pd/hyp.txt" --out "$pd" --set "$p" > /dev/null
      wer=$(awk '/%WER/ {print $2; exit}' "$pd/wer.txt")
      ci=$(grep -o '95% CI \[[^]]*\]' "$pd/wer.txt" | head -1 | sed 's/95% CI //' || true)
      row="$row | $wer $ci"
    done
    echo "$row |"
  done
} > "$out"
cat "$out"
