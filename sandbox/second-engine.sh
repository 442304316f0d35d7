#!/usr/bin/env bash
# A second Docker engine on this machine, standing in for another machine: its own data
# root, exec root, pidfile, Unix socket, a TCP listener on loopback and its own bridge (so
# it does not clash with the first engine's docker0). Used by the tests of batches spread
# over several engines; handy to try `--engine` without a second machine.
#
#   sandbox/second-engine.sh start [--images IMAGE...]   # start it; copy images into it
#   sandbox/second-engine.sh stop                        # stop it (its containers stop too)
#   sandbox/second-engine.sh status                      # exit 0 when it answers
#
# It listens on tcp://127.0.0.1:${SELFAGENT_ENGINE2_PORT:-23750} and
# unix:///run/selfagent-engine2/docker.sock. Needs root. Images are copied from the first
# engine with `docker save | docker load` (skipped when the second one has them already).
set -euo pipefail

port="${SELFAGENT_ENGINE2_PORT:-23750}"
root=/var/lib/selfagent-engine2
run=/run/selfagent-engine2
sock="unix://$run/docker.sock"
bridge=sa-engine2
subnet=172.29.0.1/16
log=/var/log/selfagent-engine2.log

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
second() { docker -H "$sock" "$@"; }
answers() { second version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  if ! answers; then
    mkdir -p "$root" "$run"
    if ! ip link show "$bridge" >/dev/null 2>&1; then
      ip link add "$bridge" type bridge
      ip addr add "$subnet" dev "$bridge"
    fi
    ip link set "$bridge" up
    # --iptables=false: the first engine owns the firewall rules; published ports still
    # work on loopback through docker-proxy, which is all selfagent uses.
    nohup dockerd \
      --data-root "$root" --exec-root "$run/exec" --pidfile "$run/docker.pid" \
      -H "$sock" -H "tcp://127.0.0.1:$port" \
      --bridge "$bridge" --iptables=false --ip6tables=false \
      >"$log" 2>&1 &
    for _ in $(seq 1 120); do answers && break; sleep 0.5; done
    answers || { tail -30 "$log" >&2; echo "second-engine: dockerd did not start" >&2; exit 1; }
  fi
  for image in "$@"; do
    id=$(docker image inspect -f '{{.Id}}' "$image")
    if [ "$(second image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)" != "$id" ]; then
      echo "second-engine: copying $image"
      docker save "$image" | second load -q >/dev/null
      second image prune -f >/dev/null   # the copy it replaced
    fi
  done
  echo "second engine: tcp://127.0.0.1:$port ($sock)"
}

stop() {
  if [ -f "$run/docker.pid" ]; then
    pid=$(cat "$run/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  answers && { echo "second-engine: still answering" >&2; exit 1; }
  return 0
}

case "${1:-}" in
  start) shift; [ "${1:-}" = "--images" ] && shift; start "$@" ;;
  stop) stop ;;
  status) answers ;;
  -h|--help|"") usage ;;
  *) echo "second-engine: unknown command '$1'" >&2; usage >&2; exit 2 ;;
esac
