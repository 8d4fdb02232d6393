#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs docker.io (+ mmdebstrap and tmux for base images) from
# Debian when missing, starts dockerd in the background when it is not running, waits until it answers.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io mmdebstrap >/dev/null
fi
if ! pgrep -x dockerd >/dev/null; then
  nohup dockerd >/tmp/dockerd.log 2>&1 &
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && { echo "docker engine ready"; exit 0; }
  sleep 1
done
echo "dockerd did not come up; see /tmp/dockerd.log" >&2
tail -n 30 /tmp/dockerd.log >&2 || true
exit 1
