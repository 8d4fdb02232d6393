#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs docker.io (+ mmdebstrap for base images, docker-registry for tests) from
# Debian when missing, starts dockerd in the background when it is not running, waits until it answers.
# docker-registry (Debian's distribution/registry) serves the local registry the image-pull tests run against.
set -euo pipefail
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v docker-registry >/dev/null || missing+=(docker-registry)
# the sandboxes' disk bound (envs/disk.py): mkfs.ext4 -d and loop mounts
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v losetup >/dev/null || missing+=(mount)
if (( ${#missing[@]} )); then
  export DEBIAN_FRONTEND=noninteractive
  # under the machine's apt lock when several set-ups share one machine
  apt_locked() { if command -v flock >/dev/null; then flock /tmp/apt.lock "$@"; else "$@"; fi; }
  apt_locked apt-get update -qq
  apt_locked apt-get install -y -qq "${missing[@]}" >/dev/null
  # the package's own service would listen on every interface (:5000); tests start their own on 127.0.0.1
  if [[ " ${missing[*]} " == *" docker-registry "* ]]; then
    { systemctl disable --now docker-registry || service docker-registry stop; } >/dev/null 2>&1 || true
  fi
fi
if docker info >/dev/null 2>&1; then exit 0; fi
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
