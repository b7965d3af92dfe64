#!/bin/sh
# Install script: put the localized archive (localize.sh) in place of the internal
# one meson installs with the shared library (tests link the internal one; users get this).
# Usage: install.sh LOCALIZED.a LIBDIR (relative to the prefix, or absolute)
set -eu
case $2 in
    /*) dir=${DESTDIR:-}$2 ;;
    *) dir=$MESON_INSTALL_DESTDIR_PREFIX/$2 ;;
esac
install -m 644 "$1" "$dir/libtlearn.a"
