#!/usr/bin/env bash
# Runs feedgate's tests.
#
# usage: bash scripts/test.sh
#
#   1. cargo test --workspace                     (monoio's io_uring driver)
#   2. cargo test -p feedgate-server              (again, on the epoll driver:
#                                                  MONOIO_FORCE_LEGACY_DRIVER=1)
#   3. cargo build --workspace --benches          (benches built, not run)
#   4. python3 -m pytest -q tests/interop         (when that folder has tests)
#
# The tests start and stop their own redis-server and feedgate processes. They need
# redis-server on the PATH: when it is missing this script installs it from apt
# (as root, or with sudo), and the interop tests' Python packages with pip.
#
# Every temporary file of the run goes under one fresh TMPDIR, removed at the end;
# any redis-server or feedgate still running from inside it is stopped then.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

header() { printf '\n===== %s =====\n' "$*"; }
say() { printf '[test] %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- prerequisites

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || { say "cargo not found: install the Rust toolchain first" >&2; exit 1; }

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    header "installing redis-server and redis-tools (apt)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi

interop_tests=""
if [ -d tests/interop ] \
    && [ -n "$(find tests/interop -name 'test_*.py' -o -name '*_test.py' | head -n 1)" ]; then
    interop_tests=1
fi

pip_install() {
    local pip=(python3 -m pip install -q --disable-pip-version-check)
    if [ "$(id -u)" -eq 0 ]; then
        pip+=(--root-user-action=ignore)
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told.
    if python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        pip+=(--break-system-packages)
    fi
    "${pip[@]}" "$@"
}

if [ -n "$interop_tests" ] && ! python3 -c 'import pytest, websockets, redis' >/dev/null 2>&1; then
    header "installing the interop tests' Python packages (pip)"
    if [ -f tests/interop/requirements.txt ]; then
        pip_install -r tests/interop/requirements.txt
    fi
    python3 -c 'import pytest, websockets, redis' >/dev/null 2>&1 || pip_install pytest websockets redis
fi

# ---------------------------------------------------------------- one TMPDIR for the run

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/feedgate-test.XXXXXX")
export TMPDIR=$run_dir
# Marks every process this run starts (redis-server overwrites its own copy of
# the environment, so its working directory, inside $run_dir, marks it too).
export FEEDGATE_TEST_RUN=${run_dir##*/}

# True when pid $1 is a redis-server or feedgate started from inside this run.
ours() {
    local pid=$1 exe comm cwd
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    exe=${exe% (deleted)}
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    case "${exe##*/}:$comm" in
        redis-server:* | redis-check-rdb:redis-server | feedgate:* | *:feedgate) ;;
        *) return 1 ;;
    esac
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || cwd=""
    case "$cwd/" in "$run_dir"/*) return 0 ;; esac
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$run_dir" && return 0
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "FEEDGATE_TEST_RUN=$FEEDGATE_TEST_RUN" && return 0
    return 1
}

safety_net() {
    local pid left=()
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [ "$pid" != "$$" ] || continue
        if ours "$pid"; then
            left+=("$pid")
        fi
    done
    [ "${#left[@]}" -gt 0 ] || return 0
    say "stopping ${#left[@]} process(es) the tests left running: ${left[*]}" >&2
    kill -TERM "${left[@]}" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        kill -0 "${left[@]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${left[@]}" 2>/dev/null || true
}

step=""
finish() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    safety_net
    rm -rf "$run_dir"
    if [ "$rc" -ne 0 ]; then
        printf '\n[test] FAILED (exit %s) in step: %s\n' "$rc" "${step:-setup}" >&2
    fi
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- the steps

step="cargo test --workspace (io_uring driver)"
header "$step"
env -u MONOIO_FORCE_LEGACY_DRIVER cargo test --workspace --no-fail-fast

step="cargo test -p feedgate-server (epoll driver: MONOIO_FORCE_LEGACY_DRIVER=1)"
header "$step"
MONOIO_FORCE_LEGACY_DRIVER=1 cargo test -p feedgate-server --no-fail-fast

step="cargo build --workspace --benches (built, not run)"
header "$step"
cargo build --workspace --benches

if [ -n "$interop_tests" ]; then
    step="python3 -m pytest -q tests/interop"
    header "$step"
    set +e
    python3 -m pytest -q tests/interop
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        say "pytest collected no test in tests/interop"
    elif [ "$rc" -ne 0 ]; then
        exit "$rc"
    fi
else
    header "python interop tests: none in tests/interop, skipped"
fi

step=""
header "all test steps passed"
