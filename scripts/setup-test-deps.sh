#!/usr/bin/env bash
# Installs what scripts/test.sh needs beyond the Rust toolchain, on a fresh Debian 12
# machine or on one where it is already there (then it only checks, in about a second):
#   - Debian packages: prometheus (promtool), nghttp2-client (h2load)
#   - a virtualenv (default .venv-test/, override with NODEWRIGHT_TEST_VENV) holding the
#     Python tools pinned in scripts/requirements-test.txt (kubernetes-validate, and
#     moto[server] whose moto_server is the EC2 emulator of the integration tests).
# Safe to run again and again: apt runs only for missing packages, pip only when the venv
# is missing or the requirements file changed since the last successful install.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NODEWRIGHT_TEST_VENV:-$repo_root/.venv-test}
requirements=$repo_root/scripts/requirements-test.txt

log() { printf 'setup-test-deps: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    log "need root (or sudo) to run: $*" >&2
    return 1
  fi
}

# --- Debian packages -------------------------------------------------------------
apt_packages=(prometheus nghttp2-client)
# pyenv's Python has venv/ensurepip built in; Debian's python3 needs python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_packages+=(python3-venv)
fi

missing=()
for pkg in "${apt_packages[@]}"; do
  # Same check as `dpkg -s`, without a pipe whose early exit would trip pipefail.
  if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq
  # No recommends: prometheus would pull in prometheus-node-exporter, which the tests do
  # not use. Only the binaries (promtool, h2load) are needed; any service the package
  # starts is irrelevant to the tests.
  as_root apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present: ${apt_packages[*]}"
fi

for tool in promtool h2load; do
  command -v "$tool" >/dev/null 2>&1 || {
    log "$tool not found on PATH after install (PATH=$PATH)" >&2
    exit 1
  }
done

# kubectl comes with the machine image (Debian's own kubectl is far too old); say so
# clearly rather than failing later inside check-manifests.sh.
if ! command -v kubectl >/dev/null 2>&1; then
  log "warning: kubectl not found; scripts/check-manifests.sh needs 'kubectl kustomize'" >&2
fi

# --- Python virtualenv -----------------------------------------------------------
stamp=$venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  log "creating virtualenv $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
fi

if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  log "installing Python requirements into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements"
  printf '%s\n' "$want" >"$stamp"
else
  log "virtualenv up to date: $venv"
fi

"$venv/bin/kubernetes-validate" --version >/dev/null
"$venv/bin/moto_server" --help >/dev/null

log "versions: $(promtool --version 2>&1 | head -n1)"
log "versions: $(h2load --version 2>&1 | head -n1)"
log "versions: kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1)"
log "versions: moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>&1)"
log "virtualenv: $venv (put it on PATH with: export PATH=\"$venv/bin:\$PATH\")"
