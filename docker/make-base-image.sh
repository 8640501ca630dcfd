#!/usr/bin/env bash
# Make the container's base image locally, for machines that reach no image registry: a minimal Debian
# root filesystem built with debootstrap from a Debian package mirror, imported into Docker as TAG.
#
#   sudo docker/make-base-image.sh                 # tags debian:bookworm-slim, the Dockerfile's default base
#   sudo docker/make-base-image.sh my/base:12      # any tag; then build with --build-arg BASE_IMAGE=my/base:12
#
# SUITE (default bookworm: Python 3.11) and MIRROR (default: the Debian mirror this machine's apt uses,
# else http://deb.debian.org/debian) may be set in the environment. Certificate authorities this machine
# trusts beyond Debian's own bundle (a TLS-inspecting proxy's, say) are added to the image, so that pip
# inside the build reaches PyPI as the host does; EXTRA_CA_CERTS=<PEM file> names them instead, and
# EXTRA_CA_CERTS=none adds none. Needs root, debootstrap and docker (Debian: apt-get install debootstrap
# docker.io). Machines that can pull images don't need this script.
set -euo pipefail

TAG=${1:-debian:bookworm-slim}
SUITE=${SUITE:-bookworm}
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "make-base-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap creates device nodes and chroots)."
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
command -v docker >/dev/null || die "docker is missing: apt-get install docker.io"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (start it: dockerd, or systemctl start docker)."

# The Debian mirror apt already uses here (deb822 .sources or one-line .list), unless MIRROR is set.
host_mirror() {
    { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p'
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}'
    } | tr ' ' '\n' | grep -E '^https?://.*/debian/?$' | head -n 1 | sed 's:/*$::'
}
MIRROR=${MIRROR:-$(host_mirror || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

work=$(mktemp -d /tmp/backprop-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "make-base-image: debootstrap $SUITE from $MIRROR into $root"
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)."; }

# The same sources a Debian image has: the release, its updates and security fixes.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES

# Trust what this machine trusts: the certificates of its bundle that Debian's lacks, or EXTRA_CA_CERTS.
split_pem() {  # split_pem FILE DIR: one file per certificate
    mkdir -p "$2"
    awk -v dir="$2" '/-----BEGIN CERTIFICATE-----/ {n++; f = sprintf("%s/%04d.pem", dir, n)}
                     n && f {print > f} /-----END CERTIFICATE-----/ {close(f); f = ""}' "$1"
}
EXTRA_CA_CERTS=${EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
if [ "$EXTRA_CA_CERTS" != none ] && [ -f "$EXTRA_CA_CERTS" ]; then
    split_pem "$EXTRA_CA_CERTS" "$work/host-ca"
    split_pem "$root/etc/ssl/certs/ca-certificates.crt" "$work/image-ca"
    digest() { tr -d ' \r\n' <"$1" | sha256sum | cut -d' ' -f1; }
    for cert in "$work"/image-ca/*.pem; do [ -e "$cert" ] && digest "$cert"; done >"$work/image-digests"
    added=0
    for cert in "$work"/host-ca/*.pem; do
        [ -e "$cert" ] || continue
        if ! grep -qx "$(digest "$cert")" "$work/image-digests"; then
            added=$((added + 1))
            cp "$cert" "$root/usr/local/share/ca-certificates/extra-$added.crt"
        fi
    done
    if [ "$added" -gt 0 ]; then
        echo "make-base-image: adding $added certificate authorit$([ "$added" = 1 ] && echo y || echo ies) this machine trusts beyond Debian's bundle"
        chroot "$root" update-ca-certificates >/dev/null
    fi
fi

# Slim like Debian's -slim images: later package installs skip manuals, docs and translations.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
SLIM
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
CLEAN
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
       "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*

echo "make-base-image: importing as $TAG"
tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$TAG" >/dev/null
docker image ls "$TAG"
