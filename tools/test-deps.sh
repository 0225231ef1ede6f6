#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, from Debian's packages: redis-server (the
# baseline the load tool's tests run against), redis-tools (redis-cli and redis-benchmark,
# which the Redis door's test drives), and make and a C compiler (the node's allocator,
# jemalloc, is built from source). Does nothing when they are already there.
set -euo pipefail
have_all() {
    command -v redis-server >/dev/null 2>&1 \
        && command -v redis-cli >/dev/null 2>&1 \
        && command -v redis-benchmark >/dev/null 2>&1 \
        && command -v make >/dev/null 2>&1 \
        && command -v cc >/dev/null 2>&1
}
if have_all; then
    exit 0
fi
echo "tools/test-deps.sh: installing redis-server, redis-tools, make and gcc from Debian's packages" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq redis-server redis-tools make gcc >/dev/null
have_all || {
    echo "tools/test-deps.sh: redis-server, redis-cli, redis-benchmark, make or cc is still missing after apt-get install" >&2
    exit 1
}
