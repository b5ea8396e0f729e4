#!/usr/bin/env bash
# Installs the Debian packages the project needs, only those that are missing:
# PostgreSQL server, Java 17+ and Maven (the Kafka broker runs from Maven-resolved jars),
# unixODBC + FreeTDS (pyodbc's driver for a real SQL Server), Chromium (the dashboard's browser test
# drives Debian's build; Playwright never downloads one).
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
dpkg -s unixodbc >/dev/null 2>&1 || missing+=(unixodbc)
dpkg -s tdsodbc >/dev/null 2>&1 || missing+=(tdsodbc)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

echo "system packages: installing ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian starts a default cluster on 5432 when the server package is installed; the project runs
# its own cluster on its own port and leaves that one alone.
