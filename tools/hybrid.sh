# Hybrid DNN-HMM stages shared by recipes/*/run.sh (sourced after tools/recipe.sh).
# Needs: $task, $data, $exp, $conf (the recipe's conf dir), $nj.
#   3 lang      lexicon, L, G (n-gram on train transcripts), G_weak
#   4 gmm       monophone GMM-HMM, alignments of train/dev, HCLG; GMM decode of dev/test -> WER
#   5 ce        CE DNN (cross-entropy, Adam) on the GMM alignments
#   6 decode    DNN log-likelihoods, LM-weight sweep on dev, test WER with 95% CI
#   7 results   the WER table (exp/results.md)

decode_model() {  # decode_model EXPDIR: loglikes of dev/test, sweep on dev, score test
  local d=$1
  hfasr loglikes --model "$d/final.pt" --data-dir "$data" --task "$task" --split dev --out "$d/loglikes_dev.pt" --text "$d/ref_dev.txt"
  hfasr loglikes --model "$d/final.pt" --data-dir "$data" --task "$task" --split test --out "$d/loglikes_test.pt" --text "$d/ref_test.txt"
  hfasr decode --loglikes "$d/loglikes_test.pt" --ref "$d/ref_test.txt" --dev-loglikes "$d/loglikes_dev.pt" \
    --dev-ref "$d/ref_dev.txt" --graph-dir "$exp/gmm/graph" --model-dir "$exp/gmm" --out "$d/decode_test" --set test
}

stage_run 3 lang hfasr lang --data-dir "$data" --task "$task" --out "$exp/lang" --config "$conf/lang.yaml"
stage_run 4 gmm hfasr gmm --data-dir "$data" --task "$task" --lang "$exp/lang" --out "$exp/gmm" \
  --config "$conf/gmm.yaml" --num-jobs "$nj" --decode-split test --quiet
stage_run 5 ce hfasr train --criterion ce --optimizer adam --data-dir "$data" --task "$task" --ali-dir "$exp/gmm" \
  --out "$exp/dnn_ce" --config "$conf/train_ce.yaml" --resume --quiet
stage_run 6 decode decode_model "$exp/dnn_ce"
if [ 7 -ge "$stage" ] && [ 7 -le "$stop_stage" ]; then
  hfasr results "$exp" --task "$task" | tee "$exp/results.md"
fi
