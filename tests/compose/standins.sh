#!/usr/bin/env bash
# Local stand-ins for the base images that Dockerfile and docker-compose.yml name, for an engine
# without registry access (the one tests/compose/engine.sh starts, or whatever DOCKER_HOST names).
# Each tag is built only when it is absent, or always with --rebuild:
#   debian:bookworm-slim     debootstrap --variant=minbase, imported
#   rust:1.95-slim-bookworm  the debian stand-in + gcc and this machine's Rust toolchain and CA bundle
#   postgres:15              the debian stand-in + Debian's postgresql-15 and an official-like entry point
# Owns: those three tags, tests/compose/standins/ and the scratch folder /var/lib/documents-ci/standins.
set -euo pipefail

DEBIAN=debian:bookworm-slim
RUST=rust:1.95-slim-bookworm
POSTGRES=postgres:15
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/standins
work=/var/lib/documents-ci/standins
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/documents-ci/docker.sock}
rebuild=0
[ "${1:-}" = --rebuild ] && rebuild=1

say() { printf 'standins: %s\n' "$*"; }

build_debian() {
  local root=$work/debian-rootfs
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  # Slim like the official image: no documentation, manual pages or translations, now or later.
  printf 'path-exclude /usr/share/%s/*\n' doc man info locale groff lintian >"$root/etc/dpkg/dpkg.cfg.d/docker"
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  rm -rf "$root"/usr/share/{doc,man,info,locale,groff,lintian}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/tmp/*
  : >"$root/etc/resolv.conf"
  : >"$root/etc/hostname"
  # This network re-signs TLS: its CAs join the bundle whenever ca-certificates is installed.
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  tar --numeric-owner -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$1"
  rm -rf "$root"
}

build_rust() {
  local want=${RUST#rust:} ctx=$work/rust-context sysroot version dir
  want=${want%%-*}
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | cut -d' ' -f2)
  case $version in "$want".*) ;; *) echo "this machine's rustc is $version, not $want"; return 1 ;; esac
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain"
  # The toolchain without its documentation (share/), hard-linked when the file system allows.
  for dir in bin lib libexec etc; do
    [ -e "$sysroot/$dir" ] || continue
    cp -al "$sysroot/$dir" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/$dir" "$ctx/toolchain/"
  done
  cp -L "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ctx/ca-certificates.crt"
  docker build --progress=plain -f "$here/rust/Dockerfile" --build-arg RUST_VERSION="$version" -t "$1" "$ctx"
  rm -rf "$ctx"
}

build_postgres() {
  docker build --progress=plain -t "$1" "$here/postgres"
}

# ensure TAG BUILD_FUNCTION: builds the tag unless it exists; one line either way.
ensure() {
  local start=$SECONDS log=$work/$2.log
  if [ "$rebuild" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; then
    say "$1 reused ($((SECONDS - start))s)"
    return
  fi
  if ! "$2" "$1" >"$log" 2>&1; then
    tail -n 30 "$log"
    say "$1 FAILED after $((SECONDS - start))s (log: $log)"
    exit 1
  fi
  say "$1 built ($((SECONDS - start))s, log: $log)"
}

timeout 10 docker info >/dev/null 2>&1 ||
  { say "no engine at $DOCKER_HOST (source tests/compose/engine.sh; engine_start)"; exit 1; }
mkdir -p "$work"
ensure "$DEBIAN" build_debian
ensure "$RUST" build_rust
ensure "$POSTGRES" build_postgres
docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' \
  --filter "reference=$DEBIAN" --filter "reference=$RUST" --filter "reference=$POSTGRES"
