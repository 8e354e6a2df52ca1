#!/usr/bin/env bash
# Creates .venv-infra (repo root) with the pinned checkers of infra/requirements-check.txt, which
# tests/test_infra_manifests.py calls; checks that promtool and kubectl are on the machine.
# Idempotent: does nothing when the pins are installed already.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-infra"
req="$root/infra/requirements-check.txt"
stamp="$venv/.installed"
python="${PYTHON:-python3.11}"
if [[ ! -f "$stamp" ]] || ! cmp -s "$req" "$stamp"; then
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
  cp "$req" "$stamp"
fi
"$venv/bin/checkov" --version >/dev/null
"$venv/bin/kubernetes-validate" --version >/dev/null
missing=""
command -v promtool >/dev/null || missing+=" promtool (Debian/Ubuntu: apt-get install prometheus)"
command -v kubectl >/dev/null || missing+=" kubectl (its built-in kustomize renders the overlays)"
if [[ -n "$missing" ]]; then echo "infra/check-tools.sh: missing:$missing" >&2; exit 1; fi
echo "infra checkers ready in $venv"
