#!/usr/bin/env bash
# spuraug's container entrypoint; works the same outside a container.
#
#   entrypoint.sh                      -> spuraug --help
#   entrypoint.sh doctor | --help | train ...   -> spuraug doctor | --help | train ...
#   entrypoint.sh python -m bench.sweep ...      -> runs the program as given (any command on
#   entrypoint.sh bash | make ... | pytest ...      PATH passes through, as `make bench DOCKER=1` uses)
#
# Outside a container, spuraug is taken from PATH, else from this checkout's .venv, else
# `python3 -m spuraug.cli` (SPURAUG_PYTHON names another interpreter).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

run_spuraug() {
    if command -v spuraug >/dev/null 2>&1; then
        exec spuraug "$@"
    elif [[ -x "$repo/.venv/bin/spuraug" ]]; then
        exec "$repo/.venv/bin/spuraug" "$@"
    else
        exec "${SPURAUG_PYTHON:-python3}" -m spuraug.cli "$@"
    fi
}

if [[ $# -eq 0 ]]; then
    run_spuraug --help
elif [[ "$1" == "spuraug" ]]; then
    shift
    run_spuraug "$@"
elif [[ "$1" != -* ]] && command -v "$1" >/dev/null 2>&1; then
    # An executable (python, make, bash, pytest, ...): pass the command line through untouched.
    exec "$@"
else
    run_spuraug "$@"
fi
