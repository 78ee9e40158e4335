# Sourced by the plot scripts: $venv, a venv in the cache with matplotlib from PyPI. Without
# it the script stops quietly (exit 0): the CSV and Markdown results stand on their own.
cache=${BARGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/barge}
venv="$cache/plot-venv"
if [ ! -f "$venv/.complete" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check matplotlib==3.10.7 \
    && touch "$venv/.complete" || { echo "matplotlib unavailable: no plot" >&2; exit 0; }
fi
