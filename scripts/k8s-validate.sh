#!/usr/bin/env bash
# Validate the Kubernetes manifests in deploy/k8s (base and every overlay) against the
# Kubernetes schemas and nacosd's own rules; see deploy/k8s/validate.py. Installs
# kubernetes-validate from PyPI when it is missing. Extra arguments go to validate.py
# (e.g. --versions 1.30,1.33). Exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$(command -v python3 || command -v python)"

if ! "$py" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    echo "k8s-validate: installing kubernetes-validate (pip)"
    "$py" -m pip install -q --disable-pip-version-check kubernetes-validate \
        || "$py" -m pip install -q --disable-pip-version-check --break-system-packages kubernetes-validate
fi
exec "$py" "$root/deploy/k8s/validate.py" "$@"
