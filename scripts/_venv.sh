# Sourced by scripts/*: create .venv when missing and keep it in step with pyproject.toml.
# torch is installed first, pinned to the CPU build on this machine's disk, so that the
# project's torch range is already satisfied and pip never pulls a CUDA build.
VENV="${VITALCAST_VENV:-$PWD/.venv}"
TORCH_SPEC="${VITALCAST_TORCH:-torch==2.13.0}"

ensure_venv() {  # $1: extra to install ("dev" or empty)
  local extra="${1:-}" stamp want
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
  want="$(cat pyproject.toml | sha256sum | cut -c1-16)-$extra"
  stamp="$VENV/.vitalcast-installed"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" && "$(cat "$stamp" 2>/dev/null)" != "${want%-*}-dev" ]]; then
    echo "== installing $TORCH_SPEC and vitalcast${extra:+[$extra]} into $VENV"
    "$VENV/bin/pip" install -q "$TORCH_SPEC"
    "$VENV/bin/pip" install -q -e ".${extra:+[$extra]}"
    echo "$want" > "$stamp"
  fi
}
