# shellcheck shell=bash
# A private Docker engine for the compose tests, to be sourced:
#   source tests/compose/engine.sh; engine_start; ...; engine_stop
# Owns: the packages docker.io and debootstrap (apt), the Compose v2 and Buildx CLI plugins in
# /usr/local/lib/docker/cli-plugins (taken from Debian trixie's packages through a private apt
# state under /var/lib/documents-ci/apt, so the system's apt sources stay as they are), and a
# dockerd with its own data root, exec root, pid file and socket under /var/lib/documents-ci and
# /run/documents-ci. engine_start exports DOCKER_HOST; engine_stop stops the engine only if
# engine_start started it.

ENGINE_STATE=/var/lib/documents-ci
ENGINE_RUN=/run/documents-ci
ENGINE_PIDFILE=$ENGINE_RUN/docker.pid
ENGINE_LOG=$ENGINE_STATE/dockerd.log
ENGINE_SOCKET=unix://$ENGINE_RUN/docker.sock
ENGINE_PLUGINS=/usr/local/lib/docker/cli-plugins
ENGINE_STARTED_HERE=${ENGINE_STARTED_HERE:-0}

_engine_say() { printf 'engine: %s\n' "$*"; }

_engine_apt_updated=0
_engine_apt_update() {
  [ "$_engine_apt_updated" = 1 ] && return 0
  _engine_say "apt-get update"
  apt-get update -qq >/dev/null || return 1
  _engine_apt_updated=1
}

# Debian bookworm has only Compose v1 (no `up --wait`); trixie's docker-compose (v2) and
# docker-buildx are static Go binaries that depend on libc6 only. They are downloaded with apt
# through a separate source list, list directory and cache, and only their binaries are copied.
_engine_plugins() {
  local apt_dir=$ENGINE_STATE/apt tmp deb
  local -a opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/sources"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Acquire::Languages=none" -o "APT::Sandbox::User=root")
  mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$ENGINE_PLUGINS"
  printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: trixie' 'Components: main' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$apt_dir/sources/trixie.sources"
  _engine_say "fetching docker-compose and docker-buildx from Debian trixie"
  tmp=$(mktemp -d) || return 1
  if apt-get "${opts[@]}" update -qq >/dev/null &&
    (cd "$tmp" && apt-get "${opts[@]}" download -qq docker-compose docker-buildx >/dev/null); then
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root" || break; done
    install -m 0755 "$tmp"/root/usr/libexec/docker/cli-plugins/docker-* "$ENGINE_PLUGINS/"
  fi
  rm -rf "$tmp"
  [ -x "$ENGINE_PLUGINS/docker-compose" ] && [ -x "$ENGINE_PLUGINS/docker-buildx" ]
}

_engine_install() {
  local -a missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -gt 0 ]; then
    _engine_apt_update || return 1
    _engine_say "apt-get install ${missing[*]}"
    mkdir -p "$ENGINE_STATE"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >"$ENGINE_STATE/apt.log" 2>&1 || { tail -n 20 "$ENGINE_STATE/apt.log"; return 1; }
  fi
  if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
    _engine_plugins || { _engine_say "could not install the Compose v2 / Buildx plugins"; return 1; }
  fi
  _engine_say "$(docker compose version), buildx $(docker buildx version | cut -d' ' -f2)"
}

_engine_pid() {
  local pid
  pid=$(cat "$ENGINE_PIDFILE" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Waits up to 60 s for the engine to answer; $1 is the dockerd pid to watch.
_engine_wait() {
  local i
  for i in $(seq 60); do
    timeout 5 docker info >/dev/null 2>&1 && { echo "$i"; return 0; }
    kill -0 "$1" 2>/dev/null || break
    sleep 1
  done
  _engine_say "dockerd did not answer; last lines of $ENGINE_LOG:" >&2
  tail -n 20 "$ENGINE_LOG" >&2
  return 1
}

engine_start() {
  local pid secs
  _engine_install || return 1
  export DOCKER_HOST=$ENGINE_SOCKET
  if pid=$(_engine_pid); then
    _engine_say "dockerd already running (pid $pid), reused"
    _engine_wait "$pid" >/dev/null
    return
  fi
  mkdir -p "$ENGINE_STATE/docker" "$ENGINE_RUN/docker"
  # No flag beyond the private paths is needed here: overlay2 works on this ext4 root (d_type),
  # and when it does not, dockerd falls back on its own (fuse-overlayfs, then vfs) and keeps the
  # driver the data root already uses. iptables (nft) and the docker0 bridge work as root; the
  # default 172.17.0.0/16 does not overlap this machine's networks; containers reach the package
  # registries through the bridge's NAT, as the host does.
  _engine_say "starting dockerd (data root $ENGINE_STATE/docker, socket $ENGINE_SOCKET, log $ENGINE_LOG)"
  dockerd --data-root "$ENGINE_STATE/docker" --exec-root "$ENGINE_RUN/docker" \
    --pidfile "$ENGINE_PIDFILE" -H "$ENGINE_SOCKET" </dev/null >>"$ENGINE_LOG" 2>&1 &
  pid=$!
  if secs=$(_engine_wait "$pid"); then
    ENGINE_STARTED_HERE=1
    _engine_say "dockerd up after ${secs}s (pid $pid, storage $(docker info -f '{{.Driver}}'))"
    return 0
  fi
  kill "$pid" 2>/dev/null
  return 1
}

engine_stop() {
  local pid i
  if [ "$ENGINE_STARTED_HERE" != 1 ]; then
    _engine_say "dockerd was not started here, left running"
    return 0
  fi
  pid=$(_engine_pid) || { _engine_say "dockerd already stopped"; ENGINE_STARTED_HERE=0; return 0; }
  _engine_say "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  for i in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || { ENGINE_STARTED_HERE=0; _engine_say "dockerd stopped after ${i}s"; return 0; }
    sleep 1
  done
  _engine_say "dockerd still running after 30s, killing it"
  kill -KILL "$pid" 2>/dev/null
  ENGINE_STARTED_HERE=0
}
