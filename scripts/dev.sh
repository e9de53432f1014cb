#!/usr/bin/env bash
# Sets up a local virtual environment (.venv) and runs one of the project's jobs in it.
#   bash scripts/dev.sh demo   # the whole chain on the bundled Quick Draw sample
#   bash scripts/dev.sh test   # the test suite
# PYTHON picks the interpreter (default python3); OUT_DIR the demo's output (default out/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV="$ROOT/.venv"

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
  fi
  # Reinstall only when setup.py changed since the last install.
  local stamp="$VENV/.sketch-rnn-installed"
  local want
  want=$(sha256sum setup.py | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "==> installing sketch-rnn and its dependencies (first run: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
case "$cmd" in
  demo)
    setup_venv
    shift
    exec "$VENV/bin/python" scripts/demo.py "$@"
    ;;
  test)
    setup_venv
    shift
    # Test paths given (bash scripts/dev.sh test tests/test_train.py -k foo): run those; else the whole suite.
    where=tests
    for arg in "$@"; do
      case "$arg" in tests/*|./tests/*) where=; break ;; esac
    done
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider $where "$@"
    ;;
  *)
    echo "usage: bash scripts/dev.sh demo|test [extra args]" >&2
    exit 2
    ;;
esac
