# Kaldi-style option parsing for recipe scripts: for every variable `foo_bar` defined before
# sourcing this file, `--foo-bar VALUE` on the command line sets it. `--help` prints them.
# Usage (in run.sh):   stage=0; stop_stage=100; . "$root/tools/parse_options.sh"
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
      exit 0 ;;
    --*)
      name=${1#--}; name=${name//-/_}
      if [ -z "${!name+x}" ]; then echo "$0: unknown option $1" >&2; exit 2; fi
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 2; fi
      printf -v "$name" '%s' "$2"; shift 2 ;;
    *) break ;;
  esac
done
