#!/usr/bin/env bash
# One entry for a fresh machine: sets up .venv on first use, then runs what you ask for.
#   bash run.sh demo [flags]    the main job: D-ODE on the embedded demo model, CPU only
#   bash run.sh test            ruff + the whole test suite (incl. a real ComfyUI 0.3.75 server on 127.0.0.1)
#   bash run.sh bench [flags]   the benchmark (held-out error, wall time, model calls)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${DODE_VENV:-.venv}"
# torch with torchvision (k-diffusion needs it); override for another platform, e.g. a CUDA or ROCm build.
TORCH_SPEC="${DODE_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

setup() {
    local stamp="$VENV/.dode-stamp" want
    want="$(cat requirements-dev.txt requirements.txt; echo "$TORCH_SPEC")"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    echo "run.sh: setting up $VENV (first run only; a few minutes)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install --quiet $TORCH_SPEC
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt -r requirements-dev.txt
    printf '%s' "$want" > "$stamp"
}

# The ComfyUI server tests also need ComfyUI's own requirements (test-only; torch stays as installed).
setup_comfy_tests() {
    local stamp="$VENV/.dode-comfy-stamp" want constraints
    want="$(cat requirements-comfy-test.txt; echo "$TORCH_SPEC")"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    constraints="$(mktemp)"
    # pin what is installed, without the local label (+cu130): pip cannot re-resolve a local version
    "$VENV/bin/python" -c 'import torch, torchvision
for module in (torch, torchvision):
    print(module.__name__ + "==" + module.__version__.split("+")[0])' > "$constraints"
    "$VENV/bin/python" -m pip install --quiet -r requirements-comfy-test.txt -c "$constraints"
    rm -f "$constraints"
    printf '%s' "$want" > "$stamp"
}

command="${1:-}"
shift || true
case "$command" in
    demo)  setup; exec "$VENV/bin/python" -m dode_core demo "$@" ;;
    test)  setup; setup_comfy_tests
           if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
               echo "run.sh: no chromium/chromedriver: the frontend test skips" \
                    "(sudo apt-get install chromium chromium-driver)" >&2
           fi
           "$VENV/bin/ruff" check . && exec "$VENV/bin/python" -m pytest "$@" ;;
    bench) setup; exec "$VENV/bin/python" bench/bench.py "$@" ;;
    *) echo "usage: bash run.sh demo|test|bench [args]" >&2; exit 2 ;;
esac
