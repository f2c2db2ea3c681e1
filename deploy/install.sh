#!/usr/bin/env bash
# Installs everything dicom-ai needs on a fresh Debian 12 machine, idempotently:
#   deploy/install.sh          the node (system packages, .venv with the package)
#   deploy/install.sh --test   plus what the tests use (dcmtk, dicom3tools, Orthanc, Chromium, OHIF, pytest,
#                              Prometheus + promtool, systemd-analyze, docker-compose for `config` checks)
#   deploy/install.sh --postgres  plus the PostgreSQL driver (the `postgres` extra) and a local PostgreSQL with a
#                              dicom_ai role and database (deploy/postgres.sh); prints the storage.database_url
set -euo pipefail
cd "$(dirname "$0")/.."
with_tests=0
with_postgres=0
for arg in "$@"; do
  case "$arg" in
    --test) with_tests=1 ;;
    --postgres) with_postgres=1 ;;
    *) echo "usage: deploy/install.sh [--test] [--postgres]" >&2; exit 2 ;;
  esac
done

apt_packages=(openssl)
if [ "$with_tests" = 1 ]; then
  apt_packages+=(dcmtk dicom3tools orthanc orthanc-dicomweb chromium fonts-dejavu-core postgresql prometheus systemd docker-compose
                 iproute2)  # iproute2: `ip netns` for the multi-host tests (tests/cli/test_serve_hosts.py)
fi
missing=()
for p in "${apt_packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts an Orthanc service on install; tests run their own instances.
  if [ -x /etc/init.d/orthanc ]; then $SUDO /etc/init.d/orthanc stop >/dev/null 2>&1 || true; fi
  # ... and a Prometheus service; the tests start their own with a temporary config.
  if [ -x /etc/init.d/prometheus ]; then $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi
fi

python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
extras=()
[ "$with_tests" = 1 ] && extras+=(test)
[ "$with_postgres" = 1 ] && extras+=(postgres)
if [ ${#extras[@]} -gt 0 ]; then
  .venv/bin/python -m pip install -q -e ".[$(IFS=,; echo "${extras[*]}")]"
else
  .venv/bin/python -m pip install -q -e .
fi

if [ "$with_tests" = 1 ] && [ ! -f .ohif/package/dist/index.html ]; then
  # The prebuilt OHIF viewer for the end-to-end screenshot test (a registry package, no build step).
  mkdir -p .ohif && (cd .ohif && npm pack -s @ohif/app@3.13.2 >/dev/null && tar xzf ohif-app-3.13.2.tgz && rm ohif-app-3.13.2.tgz)
fi

if [ "$with_postgres" = 1 ]; then
  deploy/postgres.sh
fi
