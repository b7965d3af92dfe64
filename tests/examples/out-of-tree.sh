#!/bin/sh
# Install libtlearn into a temporary directory and build examples out of tree against the
# installed header and library with pkg-config, as a user would:
#   shared:  cc app.c $(pkg-config --cflags --libs tlearn)
#   static:  cc app.c $(pkg-config --cflags tlearn) libtlearn.a $(pkg-config --static --libs ...)
# The static link proves that tlearn.pc's Libs.private / Requires.private name everything
# libtlearn.a needs (BLIS, libm, threads, zlib, protobuf-c when ONNX is built in).
# Usage: out-of-tree.sh MESON BUILD_DIR SOURCE_DIR
set -eu
meson=$1 build=$2 src=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
fail() { echo "FAIL: $*"; exit 1; }

"$meson" install -C "$build" --destdir "$root" --no-rebuild --quiet >/dev/null ||
    fail "meson install --destdir failed"
pc=$(find "$root" -name tlearn.pc | head -n 1)
[ -n "$pc" ] || fail "tlearn.pc was not installed"
echo "installed: $pc"
cat "$pc"
# The installed .pc has the real prefix; the sysroot maps its paths into $root.
export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$root"
libdir=$root$(pkg-config --variable=libdir tlearn | sed "s|^$root||")
[ -f "$libdir/libtlearn.so.1" ] || fail "no libtlearn.so.1 in $libdir"
[ -f "$libdir/libtlearn.a" ] || fail "no libtlearn.a in $libdir"
grep -q '^Libs.private:.*-lblis' "$pc" || fail "Libs.private lacks -lblis"
grep -q '^Libs.private:.*-lm' "$pc" || fail "Libs.private lacks -lm"
grep -q '^Requires.private:.*zlib' "$pc" || fail "Requires.private lacks zlib"
cflags=$(pkg-config --cflags tlearn)
echo "cflags: $cflags"
echo "libs: $(pkg-config --libs tlearn)"
echo "static libs: $(pkg-config --static --libs tlearn)"
case "$cflags" in *"$root"*) ;; *) fail "cflags do not point into the install: $cflags" ;; esac
[ -f "$root$(pkg-config --variable=includedir tlearn | sed "s|^$root||")/tlearn/version.h" ] ||
    fail "tlearn/version.h was not installed"

# Copy the examples out of the source tree so nothing but the install can be found.
mkdir "$work/app"
cp "$src/examples/feature-extraction.c" "$src/examples/head-finetune.c" "$work/app/"
cp -r "$src/examples/common" "$work/app/"
cd "$work/app"

# Shared: the pc file's Libs, plus zlib for the example's own IDX reader.
cc -std=c11 -O2 -Wall -Werror -o fe-shared feature-extraction.c common/fmnist.c common/pretrain.c \
    $(pkg-config --cflags --libs tlearn) -lz || fail "shared build"
LD_LIBRARY_PATH=$libdir ldd ./fe-shared | grep -q "$libdir/libtlearn.so.1" ||
    fail "fe-shared does not use the installed libtlearn.so.1"
LD_LIBRARY_PATH=$libdir ./fe-shared | tee out.txt
grep -q '^nearest-centroid accuracy=' out.txt || fail "fe-shared printed no accuracy"

# Static: libtlearn.a plus the private dependencies from the pc file, nothing else.
static_libs=$(pkg-config --static --libs tlearn | sed 's/-ltlearn//')
cc -std=c11 -O2 -Wall -Werror -o hf-static head-finetune.c common/fmnist.c common/pretrain.c \
    $(pkg-config --cflags tlearn) "$libdir/libtlearn.a" $static_libs ||
    fail "static build with: $libdir/libtlearn.a $static_libs"
if readelf -d hf-static | grep -q 'libtlearn'; then fail "hf-static still needs libtlearn.so"; fi
./hf-static | tee out.txt
grep -q '^head-only fine-tuning accuracy=' out.txt || fail "hf-static printed no accuracy"
echo "ok: installed libtlearn builds and runs examples, shared and static"
