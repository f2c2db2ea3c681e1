#!/usr/bin/env bash
# Sets up a local PostgreSQL for dicom-ai on one Debian host, idempotently (deploy/install.sh --postgres runs it):
# Debian's `postgresql` package, its `main` cluster started, a `dicom_ai` login role with a generated password and
# a `dicom_ai` database it owns. Prints the storage.database_url to put in config.toml (or DICOM_AI_DATABASE_URL);
# the URL is also kept, readable by root only, in $DICOM_AI_DATABASE_URL_FILE (default /etc/dicom-ai/database.url),
# so a second run prints the same one. The cluster listens on localhost only (Debian's default): for workers on
# other hosts, see README "Running on several machines" (listen_addresses, pg_hba.conf, TLS).
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
url_file=${DICOM_AI_DATABASE_URL_FILE:-/etc/dicom-ai/database.url}

if ! dpkg -s postgresql >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
# Without systemd (containers, CI) the package cannot start its cluster itself.
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1)
if [ "$status" != online ]; then
  $SUDO pg_ctlcluster "$version" "$cluster" start
fi
as_postgres() { $SUDO runuser -u postgres -- "$@"; }
psql_q() { as_postgres psql -p "$port" -XtAq -v ON_ERROR_STOP=1 "$@"; }

if $SUDO test -s "$url_file"; then
  url=$($SUDO cat "$url_file")
  password=$(python3 -c 'import sys, urllib.parse as u; print(u.unquote(u.urlsplit(sys.argv[1]).password or ""))' "$url")
else
  password=$(openssl rand -hex 24)
  url="postgresql+psycopg://dicom_ai:${password}@127.0.0.1:${port}/dicom_ai"
fi
if [ "$(psql_q -c "SELECT 1 FROM pg_roles WHERE rolname = 'dicom_ai'")" != 1 ]; then
  psql_q -c "CREATE ROLE dicom_ai LOGIN PASSWORD '${password}'"
else
  psql_q -c "ALTER ROLE dicom_ai LOGIN PASSWORD '${password}'"
fi
if [ "$(psql_q -c "SELECT 1 FROM pg_database WHERE datname = 'dicom_ai'")" != 1 ]; then
  as_postgres createdb -p "$port" -O dicom_ai -E UTF8 dicom_ai
fi
$SUDO install -d -m 700 "$(dirname "$url_file")"
printf '%s\n' "$url" | $SUDO tee "$url_file" >/dev/null
$SUDO chmod 600 "$url_file"
echo "PostgreSQL $version/$cluster on port $port: database dicom_ai, role dicom_ai"
echo "storage.database_url = \"$url\""
