#!/usr/bin/env bash
# Installs dicom-ai as a system service on Debian 12:  sudo deploy/install-service.sh
#   the code in /opt/dicom-ai (a copy of this checkout with its own .venv, deploy/install.sh), the service user
#   `dicom-ai` (systemd-sysusers), /etc/dicom-ai/config.toml (kept when present), the hardened unit, enabled and
#   started. Check it with `systemctl status dicom-ai` and `curl -s 127.0.0.1:8080/readyz`.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
cd "$(dirname "$0")/.."
install -d -m 0755 /opt/dicom-ai
cp -a --no-preserve=ownership README.md config.toml pyproject.toml dicom_ai models deploy /opt/dicom-ai/
(cd /opt/dicom-ai && deploy/install.sh)
install -m 0644 deploy/systemd/dicom-ai.sysusers /usr/lib/sysusers.d/dicom-ai.conf
systemd-sysusers dicom-ai.conf
if [ ! -f /etc/dicom-ai/config.toml ]; then
  install -d -m 0750 -g dicom-ai /etc/dicom-ai
  # the documented defaults with this host's paths: data in /var/lib/dicom-ai, models from /opt/dicom-ai/models
  sed -e 's|^data_dir = "var"|data_dir = "/var/lib/dicom-ai"|' \
      -e 's|^models_dir = "models"|models_dir = "/opt/dicom-ai/models"|' config.toml > /etc/dicom-ai/config.toml
  chgrp dicom-ai /etc/dicom-ai/config.toml && chmod 0640 /etc/dicom-ai/config.toml
  echo "wrote /etc/dicom-ai/config.toml: add [nodes], and [http.users] (dicom-ai http hash-password)"
fi
systemd-analyze verify deploy/systemd/dicom-ai.service
install -m 0644 deploy/systemd/dicom-ai.service /etc/systemd/system/dicom-ai.service
systemctl daemon-reload
systemctl enable --now dicom-ai.service
systemctl --no-pager status dicom-ai.service | head -5
