#!/bin/sh
# The Rust bindings' declared minimum Rust version (rust-version in examples/rust/Cargo.toml)
# is not newer than Debian 12's rustc, and the workspace builds and passes its tests (doc
# tests and the example included) with Debian's toolchain: /usr/bin/cargo, rustc and
# rustdoc, whatever newer toolchain (rustup) PATH may offer.
# Usage: msrv.sh SOURCE_DIR BUILD_DIR
set -eu
src=$1 build=$2
fail() { echo "FAIL: $*"; exit 1; }
for p in /usr/bin/rustc /usr/bin/cargo /usr/bin/rustdoc; do
    [ -x "$p" ] || fail "$p is missing (Debian packages rustc and cargo)"
done
declared=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$src/examples/rust/Cargo.toml")
[ -n "$declared" ] || fail "examples/rust/Cargo.toml declares no rust-version"
for crate in tlearn tlearn-sys; do
    grep -q '^rust-version.workspace *= *true' "$src/examples/rust/$crate/Cargo.toml" ||
        fail "examples/rust/$crate/Cargo.toml does not take the workspace's rust-version"
done
have=$(/usr/bin/rustc --version | awk '{ print $2 }')
echo "declared rust-version $declared, Debian's rustc $have"
# $declared <= $have, comparing numerically part by part
[ "$(printf '%s\n%s\n' "$declared" "$have" | sort -t . -k 1,1n -k 2,2n -k 3,3n | head -n 1)" = "$declared" ] ||
    fail "rust-version $declared is newer than Debian's rustc $have"
PATH=/usr/bin:/bin RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
CARGO_TARGET_DIR="$build/tests/rust/cargo-msrv-target" \
PKG_CONFIG_PATH="$build/meson-uninstalled" LD_LIBRARY_PATH="$build/lib" \
    /usr/bin/cargo test --offline --quiet --manifest-path "$src/examples/rust/Cargo.toml" ||
    fail "the Rust workspace does not build or pass with Debian's rustc $have"
echo "ok: the Rust bindings build and pass with rustc $have (declared minimum $declared)"
