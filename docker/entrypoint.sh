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
#
# jemalloc (issue 21; docs/harness.md "CPU training speed") is preloaded into whatever runs
# when libjemalloc.so.2 is installed (the images install libjemalloc2); JEMALLOC=0 turns it
# off, JEMALLOC=/path/libjemalloc.so.2 names the file. `spuraug doctor` says if it is active.
set -euo pipefail

find_jemalloc() {
    local f
    for f in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
             /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 /usr/local/lib/libjemalloc.so.2; do
        [[ -f "$f" ]] && { echo "$f"; return; }
    done
    PATH="$PATH:/sbin:/usr/sbin" ldconfig -p 2>/dev/null | awk '/libjemalloc\.so\.2 /{print $NF; exit}' || true
}

case "${JEMALLOC:-auto}" in
    0|no|false|off) jemalloc="" ;;
    auto) jemalloc="$(find_jemalloc)" ;;
    *) jemalloc="$JEMALLOC"; [[ -f "$jemalloc" ]] || jemalloc="" ;;
esac
if [[ -n "$jemalloc" && ":${LD_PRELOAD:-}:" != *":$jemalloc:"* ]]; then
    export LD_PRELOAD="$jemalloc${LD_PRELOAD:+:$LD_PRELOAD}"
fi

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
