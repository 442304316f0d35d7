#!/usr/bin/env bash
# Makes sure the vendors' SDK judge (tests/sdk/validate.py) is serving on SOCKET: creates
# the tests' Python environment (target/sdk-venv, from tests/sdk/requirements.txt) when it
# is missing, then starts the judge in the background unless one already answers. Run under
# flock by tests/common/sdk.rs, so concurrent test processes start one judge.
#   tests/sdk/start.sh SOCKET      the environment, then the judge
#   tests/sdk/start.sh --venv      only the environment (.ci/run's set-up)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
socket="$1"
venv="${SELFAGENT_TEST_VENV:-$root/target/sdk-venv}"
py="$venv/bin/python"
stamp="$venv/.requirements"
if [ ! -x "$py" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  echo "creating the tests' Python environment in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
  cp "$here/requirements.txt" "$stamp"
fi
[ "$socket" = "--venv" ] && { echo "$py"; exit 0; }
alive() {
  "$py" - "$socket" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
    s.sendall(b'{"api": "ping"}\n')
    sys.exit(0 if s.makefile().readline() else 1)
except OSError:
    sys.exit(1)
PY
}
alive && exit 0
rm -f "$socket"
setsid -f "$py" "$here/validate.py" --socket "$socket" --idle 900 </dev/null >/dev/null 2>&1
for _ in $(seq 1 600); do
  [ -S "$socket" ] && alive && exit 0
  sleep 0.1
done
echo "the SDK judge did not start on $socket" >&2
exit 1
