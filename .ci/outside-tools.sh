#!/usr/bin/env bash
# Outside programs the tests drive, from Debian's packages where they are missing (root and apt-get
# needed; elsewhere it says what to install): chromium (the MLflow UI approval test, through
# Playwright from the lock: no browser download), prometheus with promtool (the rollout controller's
# PromQL source; the alert rules' check). kubectl comes with the machine (its built-in kustomize
# renders infra/k8s); Debian's kubernetes-client (1.20) is too old to stand in for it.
set -uo pipefail
apt_updated=""
need_apt() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "outside-tools: $1 is missing; install $2 ($3)" >&2
    return 0
  fi
  echo "outside-tools: installing $2 ($3)"
  if [ -z "$apt_updated" ]; then apt-get update -qq || true; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null || echo "outside-tools: could not install $2" >&2
}
need_apt chromium chromium "tests/test_ui_approval.py drives the MLflow UI in it"
need_apt promtool prometheus "tests/test_rollout_server.py scrapes the service with it; promtool checks infra's alert rules"
command -v kubectl >/dev/null 2>&1 || echo "outside-tools: kubectl is missing (tests/test_infra_manifests.py renders infra/k8s with it)" >&2
exit 0
