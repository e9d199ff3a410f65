#!/usr/bin/env bash
# One entry for a fresh machine: sets up .venv on first use, then runs what you ask for.
#   bash run.sh demo [flags]    the main job: D-ODE on the embedded demo model, CPU only (python -m dode_demo)
#   bash run.sh test [args]     ruff + the whole test suite (incl. a real ComfyUI 0.3.75 server on 127.0.0.1),
#                               then the product tests again on Python 3.10 (.venv310; DODE_PY310=0 skips it)
#   bash run.sh test310 [args]  only that Python 3.10 leg
#   bash run.sh bench [flags]   the benchmark (held-out error, wall time, model calls)
set -euo pipefail
cd "$(dirname "$0")"

VENV="${DODE_VENV:-.venv}"
VENV310="${DODE_VENV310:-.venv310}"
# torch with torchvision (k-diffusion needs it); override for another platform, e.g. a CUDA or ROCm build.
TORCH_SPEC="${DODE_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
# The tests that need only the product and k-diffusion (not ComfyUI): what the Python 3.10 leg runs.
PY310_IGNORE=(--ignore-glob='tests/test_comfy_*')

# make_venv VENV PYTHON REQUIREMENTS...: a venv with torch and the requirement files, redone when they change
make_venv() {
    local venv="$1" python="$2" stamp="$1/.dode-stamp" want
    shift 2
    want="$(cat "$@"; echo "$TORCH_SPEC")"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return
    fi
    echo "run.sh: setting up $venv (first run only; a few minutes)" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet $TORCH_SPEC
    local requirement_args=()
    for file in "$@"; do requirement_args+=(-r "$file"); done
    "$venv/bin/python" -m pip install --quiet "${requirement_args[@]}"
    printf '%s' "$want" > "$stamp"
}

setup() { make_venv "$VENV" python3 requirements-dev.txt requirements.txt; }

# A Python 3.10 interpreter: DODE_PYTHON310, python3.10 on PATH, or pyenv's.
python310() {
    local candidate
    for candidate in "${DODE_PYTHON310:-}" python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python3.10; do
        if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' \
                >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The product tests on Python 3.10 (the WebUI's Python). Without a 3.10: a note, or under CI=true a failure.
test310() {
    local python
    if ! python="$(python310)"; then
        if [ "${CI:-}" = true ]; then
            echo "run.sh: no Python 3.10 found (set DODE_PYTHON310); CI must test the product on 3.10" >&2
            return 1
        fi
        echo "run.sh: no Python 3.10 found (set DODE_PYTHON310): the 3.10 leg is skipped" >&2
        return 0
    fi
    # ComfyUI's tests stay on the main leg: drop them from the arguments, and stop if nothing else was named
    local args=() dropped=0 named=0 arg status=0
    for arg in "$@"; do
        case "$arg" in
            *test_comfy_*) dropped=1 ;;
            tests*|*.py|*.py::*) named=1; args+=("$arg") ;;
            *) args+=("$arg") ;;
        esac
    done
    if [ "$dropped" = 1 ] && [ "$named" = 0 ]; then
        echo "run.sh: only ComfyUI tests named: nothing to run on Python 3.10" >&2
        return 0
    fi
    make_venv "$VENV310" "$python" requirements-py310.txt requirements.txt
    echo "run.sh: the product tests on $("$VENV310/bin/python" --version)" >&2
    "$VENV310/bin/python" -m pytest -p no:cacheprovider "${PY310_IGNORE[@]}" ${args[@]+"${args[@]}"} || status=$?
    [ "$status" -eq 5 ] && status=0  # the arguments deselected every product test (-k ...): nothing to run
    return "$status"
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
    demo)  setup; exec "$VENV/bin/python" -m dode_demo "$@" ;;
    test)  setup; setup_comfy_tests
           if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
               echo "run.sh: no chromium/chromedriver: the frontend test skips" \
                    "(sudo apt-get install chromium chromium-driver)" >&2
           fi
           "$VENV/bin/ruff" check .
           "$VENV/bin/python" -m pytest "$@"
           if [ "${DODE_PY310:-1}" != 0 ]; then test310 "$@"; fi ;;
    test310) test310 "$@" ;;
    bench) setup; exec "$VENV/bin/python" bench/bench.py "$@" ;;
    *) echo "usage: bash run.sh demo|test|test310|bench [args]" >&2; exit 2 ;;
esac
