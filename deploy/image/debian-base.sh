#!/bin/sh
# The image's base where python:3.11-slim-bookworm cannot be pulled (no container registry
# reachable): Debian bookworm from Debian's own packages (debootstrap), with Python 3.11 and
# what the Dockerfile relies on in the public base: `python` on the PATH, `python -m venv`
# with pip, groupadd/useradd, CA certificates, C.UTF-8. Security updates applied; no
# documentation, manual pages or translations (what the slim images leave out too).
#
# Usage (root): debian-base.sh ROOTFS_DIR. `make image` runs it and caches the result: this
# file's hash keys the cache (bridge/devtools/release/image.py), so any change here rebuilds.
set -eu

rootfs=$1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror"

cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
chroot "$rootfs" apt-get update -qq
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade
chroot "$rootfs" apt-get clean

# What later `apt-get install`s in derived images leave out too (as Debian's slim images do).
cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/apt/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old

# `python` as in the public base (there /usr/local/bin/python is Python itself).
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
chroot "$rootfs" python -c 'import ensurepip, ssl, sys, venv; print("base: Python", sys.version.split()[0])'
