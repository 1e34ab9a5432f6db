# Sourced by the other scripts: create or refresh the project's virtual environment, activate it.
#
# The environment lives in $IMGSEARCH_VENV (default: .venv in the checkout). It is rebuilt when
# pyproject.toml changes (a hash is stamped inside it), so a cached one is reused safely.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IMGSEARCH_VENV:-$ROOT/.venv}"
EXTRAS="${IMGSEARCH_EXTRAS:-all,dev}"

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "imgsearch needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

wanted="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $EXTRAS"
stamp="$VENV/.imgsearch-installed"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
  python="$(find_python)"
  echo "==> creating the virtual environment in $VENV (first run downloads torch, ~5 GB: a few minutes)" >&2
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools
  "$VENV/bin/python" -m pip install --quiet --editable "$ROOT[$EXTRAS]"
  echo "$wanted" >"$stamp"
elif [[ "$("$VENV/bin/python" -I -c 'import imgsearch, pathlib; print(pathlib.Path(imgsearch.__file__).parent.parent)' 2>/dev/null)" != "$ROOT" ]]; then
  # A cached environment from another checkout: point the editable install here (no downloads).
  # -I: asked from the checkout, a plain `python -c` finds imgsearch in the working directory
  # and says all is well, while the console scripts (imgsearch, imgsearch-embedder, ...) still
  # import the other checkout's code, or none when it is gone.
  "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --editable "$ROOT"
fi

# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$ROOT"
