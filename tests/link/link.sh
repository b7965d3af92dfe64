#!/bin/sh
# Suite 'link': install libtlearn into a temporary prefix and link a program out of tree,
# as the README and doc/guide.md say:
#   static:  cc app.c $(pkg-config --static --cflags --libs tlearn-static)
#   shared:  cc app.c $(pkg-config --cflags --libs tlearn) -Wl,-rpath,LIBDIR
# The static binary must not need libtlearn.so at all (readelf, ldd), the installed
# libtlearn.a must have no global symbol but the tlearn_* names of lib/tlearn.map (nm),
# and the program (which defines tl_alloc, tl_free and ox_model_build itself) must link and
# run. Usage: link.sh MESON BUILD_DIR SOURCE_DIR
set -eu
meson=$1 build=$2 src=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/tlearn-link.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
fail() { echo "FAIL: $*"; exit 1; }
unset LD_LIBRARY_PATH # meson test points it at the build tree; only the install counts here

"$meson" install -C "$build" --destdir "$root" --no-rebuild --quiet >/dev/null ||
    fail "meson install --destdir failed"
pcdir=$(dirname "$(find "$root" -name tlearn-static.pc | head -n 1)")
[ -f "$pcdir/tlearn-static.pc" ] || fail "tlearn-static.pc was not installed"
# The install as if configured with its prefix in $root: the .pc files with prefix moved.
mkdir "$work/pkgconfig"
for pcfile in "$pcdir"/tlearn*.pc; do
    sed "s|^prefix=|prefix=$root|" "$pcfile" > "$work/pkgconfig/${pcfile##*/}"
done
export PKG_CONFIG_PATH="$work/pkgconfig"
cat "$work/pkgconfig/tlearn-static.pc"
libdir=$(pkg-config --variable=libdir tlearn-static)
archive=$libdir/libtlearn.a
[ -f "$archive" ] || fail "no $archive"

# 1. Only tlearn_* is global in the archive, and every exported name is there.
nm -g --defined-only "$archive" | awk 'NF == 3 { print $3 }' | sort > "$work/globals"
grep -v '^tlearn_' "$work/globals" > "$work/internal" || true
if [ -s "$work/internal" ]; then
    echo "$(wc -l < "$work/internal") non-tlearn_ global symbols in $archive, e.g.:"
    head -n 20 "$work/internal"
    fail "the installed archive exposes internal symbols"
fi
sed -n 's/^[[:space:]]*\(tlearn_[A-Za-z0-9_]*\);.*/\1/p' "$src/lib/tlearn.map" | sort -u \
    > "$work/exported"
cmp -s "$work/globals" "$work/exported" ||
    fail "archive globals differ from lib/tlearn.map: $(diff "$work/exported" "$work/globals" | head -n 5)"
echo "ok: $archive has $(wc -l < "$work/globals") global symbols, all tlearn_*"

# 2. Both modules name every library libtlearn.so.1 needs (its DT_NEEDED, libc aside) for a
#    static link: -lX for libX.so, -fopenmp for libgomp, -pthread for libpthread.
needed=$(readelf -d "$libdir/libtlearn.so.1" | sed -n 's/.*(NEEDED).*\[lib\([^].]*\)\.so.*/\1/p')
for module in tlearn tlearn-static; do
    flags=" $(pkg-config --static --libs $module) "
    for lib in $needed; do
        case $lib in
            c) continue ;;
            gomp) want="-fopenmp" ;;
            pthread) want="-pthread" ;;
            *) want="-l$lib" ;;
        esac
        case $flags in
            *" $want "* | *" -l$lib "*) ;;
            *) fail "pkg-config --static --libs $module lacks $want (libtlearn.so.1 needs lib$lib):$flags" ;;
        esac
    done
done
echo "ok: both modules name every dependency of libtlearn.so.1:" $needed

# 3. Static link from the documented line: nothing of libtlearn is dynamic.
cp "$src/tests/link/app.c" "$work/app.c"
cd "$work"
flags=$(pkg-config --static --cflags --libs tlearn-static)
echo "static: cc app.c $flags"
cc -std=c11 -Wall -Werror -o app-static app.c $flags || fail "static link failed"
if readelf -d app-static | grep -i 'NEEDED.*libtlearn'; then
    fail "app-static needs libtlearn dynamically"
fi
if ldd app-static | grep -i tlearn; then fail "ldd shows libtlearn in app-static"; fi
./app-static || fail "app-static did not run"

# 4. Shared link from the same prefix, found at run time by its rpath, then without it
#    through LD_LIBRARY_PATH.
flags=$(pkg-config --cflags --libs tlearn)
echo "shared: cc app.c $flags -Wl,-rpath,$libdir"
cc -std=c11 -Wall -Werror -o app-rpath app.c $flags -Wl,-rpath,"$libdir" ||
    fail "shared link failed"
ldd app-rpath | grep -q "$libdir/libtlearn.so.1" || fail "app-rpath does not use $libdir"
./app-rpath || fail "app-rpath did not run"
cc -std=c11 -Wall -Werror -o app-shared app.c $flags || fail "shared link failed"
LD_LIBRARY_PATH=$libdir ./app-shared || fail "app-shared did not run with LD_LIBRARY_PATH"
echo "ok: static and shared links from an installed prefix"
