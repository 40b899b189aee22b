# Hybrid DNN-HMM stages shared by recipes/*/run.sh (sourced after tools/recipe.sh).
# Needs: $task, $data, $exp, $conf (the recipe's conf dir), $nj; optional: $seq_runs (sequence
# training runs, e.g. "smbr_hf mmi_hf smbr_sgd"; each <criterion>_<optimizer> reads
# $conf/seq_<run>.yaml), $lm_weights / $word_penalties (the dev sweep of the decode stages).
#   3 lang      lexicon, L, G (n-gram on train transcripts), G_weak
#   4 gmm       monophone GMM-HMM, alignments of train/dev, HCLG; GMM decode of test -> WER with
#               the LM weight of $gmm_lm_weights best on dev
#   5 ce        CE DNN (cross-entropy, Adam) on the GMM alignments; with $realign, a first CE DNN
#               (dnn_ce_pass1) realigns the data (hfasr align, dnn_ali) and dnn_ce is trained on that
#   6 decode    DNN log-likelihoods, LM-weight sweep on dev, test WER with 95% CI
#   7 lattices  denominator lattices of train/dev with the CE model over the weak-LM graph
#   8 seq       sequence training from the CE model (each run of $seq_runs), then decoding
#   9 results   the WER table (exp/results.md) and, with sequence runs, exp/report.{png,md}
seq_runs=${seq_runs-}
lm_weights=${lm_weights-}
word_penalties=${word_penalties:-0,0.5,1}
gmm_lm_weights=${gmm_lm_weights:-5,7,9,10,11,13,15,17}  # the GMM's dev sweep (stage 4)
gmm_decode_opts=${gmm_decode_opts-}  # extra options of the GMM's decodes (stage 4), e.g. "--beam 11 --max-active 3000 --decode-jobs 2"
lattice_opts=${lattice_opts-}  # extra options of `hfasr lattices` (stage 7), e.g. "--beam 10 --lattice-beam 4"
decode_opts=${decode_opts-}  # extra options of `hfasr decode` (stages 6 and 8), e.g. "--beam 11 --max-active 3000"
arpa=${arpa-}  # non-empty: G from this ARPA file (stage 3) instead of the training transcripts
realign=${realign-}  # non-empty: realign with a first CE DNN and train dnn_ce on its alignments (stage 5)
results_cer=${results_cer-}  # non-empty: a %CER column in the results table (stage 9)

decode_model() {  # decode_model EXPDIR: loglikes of dev/test, sweep on dev, score test
  local d=$1
  hfasr loglikes --model "$d/final.pt" --data-dir "$data" --task "$task" --split dev --out "$d/loglikes_dev.pt" --text "$d/ref_dev.txt"
  hfasr loglikes --model "$d/final.pt" --data-dir "$data" --task "$task" --split test --out "$d/loglikes_test.pt" --text "$d/ref_test.txt"
  hfasr decode --loglikes "$d/loglikes_test.pt" --ref "$d/ref_test.txt" --dev-loglikes "$d/loglikes_dev.pt" \
    --dev-ref "$d/ref_dev.txt" --graph-dir "$exp/gmm/graph" --model-dir "$exp/gmm" --out "$d/decode_test" --set test \
    --num-workers "$nj" ${lm_weights:+--lm-weights "$lm_weights"} --word-penalties "$word_penalties" $decode_opts
}

stage_run 3 lang hfasr lang --data-dir "$data" --task "$task" --out "$exp/lang" --config "$conf/lang.yaml" \
  ${arpa:+--arpa "$arpa"}
stage_run 4 gmm hfasr gmm --data-dir "$data" --task "$task" --lang "$exp/lang" --out "$exp/gmm" \
  --config "$conf/gmm.yaml" --num-jobs "$nj" --decode-split test --lm-weights "$gmm_lm_weights" --quiet $gmm_decode_opts
ali=$exp/gmm  # the alignments of CE and sequence training
if [ -n "$realign" ]; then
  # Kaldi nnet1: a first CE DNN on the GMM alignments realigns the training data, a second one
  # (dnn_ce, which the later stages use) is trained on its alignments
  stage_run 5 ce_pass1 hfasr train --criterion ce --optimizer adam --data-dir "$data" --task "$task" \
    --ali-dir "$exp/gmm" --out "$exp/dnn_ce_pass1" --config "$conf/train_ce.yaml" --resume --quiet
  stage_run 5 realign hfasr align --model "$exp/dnn_ce_pass1/final.pt" --data-dir "$data" --task "$task" \
    --gmm-dir "$exp/gmm" --lang "$exp/lang" --out "$exp/dnn_ali" --num-jobs "$nj" --quiet
  ali=$exp/dnn_ali
fi
stage_run 5 ce hfasr train --criterion ce --optimizer adam --data-dir "$data" --task "$task" --ali-dir "$ali" \
  --out "$exp/dnn_ce" --config "$conf/train_ce.yaml" --resume --quiet
stage_run 6 decode decode_model "$exp/dnn_ce"
if [ -n "$seq_runs" ]; then
  stage_run 7 lattices hfasr lattices --model "$exp/dnn_ce/final.pt" --data-dir "$data" --task "$task" \
    --lang "$exp/lang" --gmm-dir "$exp/gmm" --out "$exp/lats" --num-jobs "$nj" --quiet $lattice_opts
  for run in $seq_runs; do
    crit=${run%_*}; opt=${run#*_}
    stage_run 8 "$run" hfasr train --criterion "$crit" --optimizer "$opt" --init "$exp/dnn_ce/final.pt" \
      --lat-dir "$exp/lats" --data-dir "$data" --task "$task" --ali-dir "$ali" --graph-dir "$exp/gmm/graph" \
      --model-dir "$exp/gmm" --out "$exp/dnn_$run" --config "$conf/seq_$run.yaml" --resume --quiet
    stage_run 8 "decode_$run" decode_model "$exp/dnn_$run"
  done
fi
if [ 9 -ge "$stage" ] && [ 9 -le "$stop_stage" ]; then
  hfasr results "$exp" --task "$task" ${results_cer:+--cer} | tee "$exp/results.md"
  if [ -n "$seq_runs" ]; then
    hfasr report $(for run in $seq_runs; do echo "$exp/dnn_$run"; done) --out "$exp/report" > /dev/null
    echo "sequence training report: $exp/report.md, $exp/report.png"
  fi
fi
