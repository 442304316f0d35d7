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
  # Harbor's ATIF models (tests/sdk/atif.py): harbor needs Python 3.12, but its pydantic
  # trajectory models load on this one when taken from the wheel alone.
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 "harbor==0.26.0" -d "$venv/wheels" >&2
  "$py" - "$venv" <<'PY'
import glob, os, sys, zipfile
venv = sys.argv[1]
out = os.path.join(venv, "harbor-atif")
with zipfile.ZipFile(glob.glob(os.path.join(venv, "wheels", "harbor-0.26.0-*.whl"))[0]) as z:
    for name in z.namelist():
        if name.startswith("harbor/models/trajectories/") or name == "harbor/utils/trajectory_validator.py":
            z.extract(name, out)
for package in ("harbor", "harbor/models", "harbor/utils"):
    open(os.path.join(out, package, "__init__.py"), "a").close()
PY
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
