# CTC stages shared by recipes/*/run.sh (sourced after tools/hybrid.sh; they need stage 2's
# features and stage 3's lang dir, not the hybrid models).
# Needs: $task, $data, $exp, $conf, $nj; $ctc_runs: CTC runs <model>_<optimizer> (e.g. "blstm_hf
# blstm_adam mdlstm_hf mdlstm_adam"), each reads $conf/ctc_<run>.yaml and trains $exp/ctc_<run>;
# empty (the default) adds nothing. A run <model>_<init>hf (e.g. blstm_adamhf) fine-tunes with HF
# from the final.pt of the run <model>_<init> (hfasr train --optimizer hf --init
# $exp/ctc_<model>_<init>/final.pt), which must come earlier in $ctc_runs or have been trained
# before. Optional: $ctc_lm_weights / $ctc_word_penalties (the dev sweep of the TLG decode;
# acoustic scale 1/LMWT).
#   10 ctc         CTC training of each run (hfasr train --criterion ctc, phones of exp/lang)
#   11 ctc_decode  greedy and TLG (CTC topology o lexicon o G) decoding of test with the LM weight /
#                  word penalty chosen on dev; then the WER table (exp/results.md) and, per model,
#                  the HF-vs-Adam report exp/report_ctc_<model>.{md,png} (dev CTC loss / greedy WER
#                  against updates and wall time)
ctc_runs=${ctc_runs-}
ctc_lm_weights=${ctc_lm_weights:-0.3,0.5,1,2}
ctc_word_penalties=${ctc_word_penalties:-0,0.5}

for run in $ctc_runs; do
  model=${run%_*}; opt=${run#*_}; init=()
  if [ "$opt" != hf ] && [ "${opt%hf}" != "$opt" ]; then  # <init>hf: HF fine-tuning of run <model>_<init>
    init=(--init "$exp/ctc_${model}_${opt%hf}/final.pt"); opt=hf
  fi
  stage_run 10 "ctc_$run" hfasr train --criterion ctc --model "$model" --optimizer "$opt" --data-dir "$data" \
    --task "$task" --lang "$exp/lang" --out "$exp/ctc_$run" --config "$conf/ctc_$run.yaml" "${init[@]}" --resume --quiet
done
for run in $ctc_runs; do
  stage_run 11 "decode_ctc_$run" hfasr ctc-decode --model "$exp/ctc_$run/final.pt" --data-dir "$data" \
    --task "$task" --lang "$exp/lang" --split test --dev-split dev --out "$exp/ctc_$run/decode_test" \
    --num-workers "$nj" --lm-weights "$ctc_lm_weights" --word-penalties "$ctc_word_penalties"
done
if [ -n "$ctc_runs" ] && [ 11 -ge "$stage" ] && [ 11 -le "$stop_stage" ]; then
  hfasr results "$exp" --task "$task" | tee "$exp/results.md"
  for model in $(for run in $ctc_runs; do echo "${run%_*}"; done | sort -u); do
    dirs=()
    for run in $ctc_runs; do
      if [ "${run%_*}" = "$model" ]; then dirs+=("$exp/ctc_$run"); fi
    done
    hfasr report "${dirs[@]}" --out "$exp/report_ctc_$model" > /dev/null
    echo "CTC $model report: $exp/report_ctc_$model.md, $exp/report_ctc_$model.png"
  done
fi
