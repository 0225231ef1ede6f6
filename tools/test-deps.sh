#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo: redis-server (from Debian's packages), the
# baseline the load tool's tests run against. Does nothing when it is already there.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
echo "tools/test-deps.sh: installing redis-server from Debian's packages" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq redis-server >/dev/null
command -v redis-server >/dev/null 2>&1 || {
    echo "tools/test-deps.sh: redis-server is still missing after apt-get install" >&2
    exit 1
}
