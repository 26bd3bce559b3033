#!/usr/bin/env bash
# Build the nacosd container image (nacosd:<version> and nacosd:local) from binaries
# already compiled on this machine, on a Debian base image built here too.
#
# Why a home-made base: this workplace's Docker has no registry to pull from, so
# `FROM debian:bookworm-slim` cannot work. The script builds a minimal Debian
# (debootstrap --variant=minbase) from the Debian mirror apt already uses, imports it
# as nacosd-base:<suite>, and caches it: the tarball under
# ${XDG_CACHE_HOME:-~/.cache}/nacosd and the image tag are reused when present. Where a
# registry is reachable, deploy/Dockerfile builds unchanged with its default base.
#
#   deploy/build-image.sh              # release binaries from target/release
#   NACOSD_PROFILE=debug deploy/build-image.sh   # target/debug if there is no release build
#   deploy/build-image.sh --base-only  # only build (or find) the base image
#
# Environment:
#   NACOSD_BIN_DIR        directory holding nacosd and nacosctl [target/release]
#   NACOSD_PROFILE        `debug`: use target/debug when target/release has no binaries
#   NACOSD_IMAGE_NAME     image repository [nacosd]; tagged <version> and local
#   NACOSD_BASE_IMAGE     base image to build on [nacosd-base:<suite>, built if absent]
#   NACOSD_DEBIAN_SUITE   Debian release of the base [bookworm]; must match the release
#                         the binaries were built on (they link its glibc and libstdc++)
#   NACOSD_DEBIAN_MIRROR  mirror for debootstrap [the one apt's sources list for the suite]
#
# Needs root (or sudo) only to install debootstrap and to run it, once.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite="${NACOSD_DEBIAN_SUITE:-bookworm}"
base_image="${NACOSD_BASE_IMAGE:-nacosd-base:$suite}"
image="${NACOSD_IMAGE_NAME:-nacosd}"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/nacosd"
base_tarball="$cache_dir/debian-$suite-minbase.tar.gz"

log() { echo "build-image: $*" >&2; }
die() { echo "build-image: error: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    SUDO=()
fi

base_only=0
case "${1:-}" in
    "") ;;
    --base-only) base_only=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument $1 (see --help)" ;;
esac

command -v docker >/dev/null 2>&1 || die "docker not found"

# The first mirror apt's sources list for exactly "$suite" (not -updates or
# -security), from one-line (.list) or deb822 (.sources) files.
apt_mirror() {
    local files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    local f
    for f in "${files[@]}"; do
        case "$f" in
            *.sources)
                # Paragraphs of "Key: value" lines; a paragraph may list several URIs
                # and suites.
                awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
                    {
                        types = ""; uris = ""; suites = ""
                        for (i = 1; i <= NF; i++) {
                            if ($i ~ /^Types:/) types = substr($i, 7)
                            if ($i ~ /^URIs:/) uris = substr($i, 6)
                            if ($i ~ /^Suites:/) suites = substr($i, 8)
                        }
                        if (types !~ /(^| )deb( |$)/) next
                        n = split(suites, s, " ")
                        for (j = 1; j <= n; j++) if (s[j] == suite) {
                            split(uris, u, " "); print u[1]; exit
                        }
                    }' "$f"
                ;;
            *)
                awk -v suite="$suite" '$1 == "deb" {
                        i = 2
                        if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                        if ($(i + 1) == suite) { print $i; exit }
                    }' "$f"
                ;;
        esac
    done | head -n 1
}

ensure_debootstrap() {
    command -v debootstrap >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and there is no apt-get to install it"
    log "installing debootstrap (apt-get)"
    "${SUDO[@]}" apt-get install -y -q debootstrap >/dev/null 2>&1 || {
        "${SUDO[@]}" apt-get update -q >/dev/null
        "${SUDO[@]}" apt-get install -y -q debootstrap >/dev/null
    }
}

# Debootstrap a minimal Debian into a temporary directory and pack it into
# $base_tarball, without docs, man pages, locales and package caches.
bootstrap_base_tarball() {
    local mirror="${NACOSD_DEBIAN_MIRROR:-$(apt_mirror)}"
    [ -n "$mirror" ] || die "no Debian mirror for '$suite' in /etc/apt/sources.list(.d); set NACOSD_DEBIAN_MIRROR"
    ensure_debootstrap
    mkdir -p "$cache_dir"
    local work
    work="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
    # shellcheck disable=SC2064 # expand $work now: it is local
    trap "${SUDO[*]} rm -rf '$work'" EXIT
    log "debootstrap --variant=minbase $suite from $mirror (a few minutes, once)"
    "${SUDO[@]}" debootstrap --variant=minbase "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed"
    }
    local r="$work/rootfs"
    "${SUDO[@]}" rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
        "$r"/usr/share/locale/* "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin \
        "$r"/var/lib/apt/lists/* "$r"/var/log/* "$r"/dev/* "$r"/tmp/* "$r"/var/tmp/*
    # Keep packages installed later (FROM this base) from bringing docs back, as the
    # -slim images do.
    "${SUDO[@]}" tee "$r/etc/dpkg/dpkg.cfg.d/nacosd-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    "${SUDO[@]}" tar --numeric-owner -C "$r" -czf "$base_tarball.part" .
    "${SUDO[@]}" chown "$(id -u):$(id -g)" "$base_tarball.part"
    mv "$base_tarball.part" "$base_tarball"
    "${SUDO[@]}" rm -rf "$work"
    trap - EXIT
    log "base tarball: $base_tarball ($(du -h "$base_tarball" | cut -f1))"
}

ensure_base_image() {
    if docker image inspect "$base_image" >/dev/null 2>&1; then
        log "base image $base_image present"
        return 0
    fi
    [ "$base_image" = "nacosd-base:$suite" ] || die "base image $base_image not found (only nacosd-base:<suite> is built here)"
    if [ -f "$base_tarball" ]; then
        log "importing cached $base_tarball"
    else
        bootstrap_base_tarball
    fi
    docker import \
        --change 'CMD ["bash"]' \
        --change "LABEL org.opencontainers.image.description=\"Debian $suite minbase, debootstrapped by nacosd's deploy/build-image.sh\"" \
        "$base_tarball" "$base_image" >/dev/null
    log "base image $base_image imported"
}

# Directory holding nacosd and nacosctl.
bin_dir() {
    if [ -n "${NACOSD_BIN_DIR:-}" ]; then
        echo "$NACOSD_BIN_DIR"
    elif [ -x "$root/target/release/nacosd" ] && [ -x "$root/target/release/nacosctl" ]; then
        echo "$root/target/release"
    elif [ "${NACOSD_PROFILE:-release}" = debug ]; then
        echo "$root/target/debug"
    else
        die "no release build in $root/target/release: run 'cargo build --release --bin nacosd --bin nacosctl', set NACOSD_BIN_DIR, or NACOSD_PROFILE=debug to use target/debug"
    fi
}

ensure_base_image
[ "$base_only" = 0 ] || exit 0

bins="$(bin_dir)"
for b in nacosd nacosctl; do
    [ -x "$bins/$b" ] || die "$bins/$b not found or not executable"
done
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
[ -n "$version" ] || die "no version in $root/Cargo.toml"

# A small build context: the two binaries, copied first (a rebuild under us changes
# nothing) and stripped (a debug build shrinks by most of its size).
context="$(mktemp -d "${TMPDIR:-/tmp}/nacosd-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
cp "$bins/nacosd" "$bins/nacosctl" "$context/"
strip "$context/nacosd" "$context/nacosctl"
log "binaries from $bins: nacosd $(du -h "$context/nacosd" | cut -f1), nacosctl $(du -h "$context/nacosctl" | cut -f1) after strip"

log "docker build $image:$version (base $base_image)"
previous="$(docker image inspect -f '{{.Id}}' "$image:local" 2>/dev/null || true)"
docker build -q -f "$root/deploy/Dockerfile" \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg BIN_DIR=. \
    -t "$image:$version" -t "$image:local" \
    "$context" >/dev/null

# Every shared library the binaries link must resolve inside the image.
for b in nacosd nacosctl; do
    libs="$(docker run --rm --entrypoint ldd "$image:local" "/usr/local/bin/$b")" \
        || die "ldd $b failed in the image"
    if grep -q "not found" <<<"$libs"; then
        echo "$libs" >&2
        die "$b links libraries the base image lacks (is the base the release the binaries were built on?)"
    fi
done
log "ldd: every shared library of nacosd and nacosctl resolves in the image"
docker run --rm "$image:local" --version >/dev/null || die "the image's nacosd does not run"
# The image this build replaced, if nothing else uses it now (a container still may).
current="$(docker image inspect -f '{{.Id}}' "$image:local")"
if [ -n "$previous" ] && [ "$previous" != "$current" ] \
    && [ "$(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    docker rmi "$previous" >/dev/null 2>&1 && log "removed the previous untagged image ${previous:7:12}"
fi

size="$(docker image inspect --format '{{.Size}}' "$image:local")"
base_size="$(docker image inspect --format '{{.Size}}' "$base_image")"
log "built $image:$version and $image:local: $((size / 1024 / 1024)) MiB (base $base_image $((base_size / 1024 / 1024)) MiB)"
