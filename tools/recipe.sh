# Helpers shared by recipes/*/run.sh (sourced after parse_options.sh).
#   stage_run N NAME CMD...   run CMD as stage N when stage <= N <= stop_stage, unless
#                             $marks/.NAME.done exists; touch the marker on success.
# Needs: $stage, $stop_stage, $marks (a directory for .done markers).
venv=$("$root/tools/setup-env.sh")
export PATH="$venv/bin:$PATH"
mkdir -p "$marks"

stage_run() {
  local n=$1 name=$2; shift 2
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then return 0; fi
  if [ -f "$marks/.$name.done" ]; then
    echo "== stage $n ($name): done before, skipping (rm $marks/.$name.done to redo)"; return 0
  fi
  echo "== stage $n ($name): $(date '+%F %T')"
  local t0=$SECONDS
  "$@"
  touch "$marks/.$name.done"
  echo "$((SECONDS - t0))" > "$marks/.$name.seconds"
  echo "== stage $n ($name) finished in $((SECONDS - t0)) s"
}
