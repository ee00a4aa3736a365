#!/usr/bin/env bash
# Fetch what the C++ example (examples/cpp) needs to build, from package registries, into a git-ignored
# folder (default: <repo>/third_party). Nothing fetched here is committed.
#
#   onnxruntime/  ONNX Runtime 1.29 C/C++ headers and Linux x64 library, laid out like an official
#                 release (include/, lib/): pass it to CMake as ORT_ROOT. Source: npm package
#                 com.github.asus4.onnxruntime@0.4.9 (MIT; the ONNX Runtime build of a Unity plug-in:
#                 the headers sit in its iOS xcframework, the library in Plugins/Linux/x64).
#   stb/          stb_image.h (public domain / MIT), from Debian's libstb-dev, downloaded, not installed.
#
# Idempotent: a second run with the same versions only prints the CMake flags. Usage:
#   scripts/fetch_cpp_deps.sh [DEST]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$(realpath -m "${1:-$root/third_party}")"

ort_npm="com.github.asus4.onnxruntime@0.4.9"
ort_npm_sha256="e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d"
ort_version="1.29.0"
stb_deb="libstb-dev=0.0~git20220908.8b5f1f3+ds-1"
stb_deb_sha256="4f85f82942c61845ac96d64d722ef1b2f4897d6662cb98bc5ff78596b8fbb144"
stamp_text="$ort_npm $ort_npm_sha256 $stb_deb $stb_deb_sha256"

die() { echo "fetch_cpp_deps: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 not found: $2"; }
check_sha256() {  # file expected
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    [ "$got" = "$2" ] || die "$1: sha256 $got, expected $2 (registry served a different file)"
}

fetch_onnxruntime() {
    need npm "install Node.js/npm (Debian: apt-get install npm), or pass your own ONNX Runtime as ORT_ROOT"
    local tmp="$1" out="$dest/onnxruntime"
    echo "fetching $ort_npm from npm (~143 MB) ..." >&2
    # A throw-away npm cache: the 143 MB tarball should not linger in ~/.npm once unpacked.
    (cd "$tmp" && npm pack --silent --cache "$tmp/npm-cache" "$ort_npm" >/dev/null)
    local tgz
    tgz="$(ls "$tmp"/com.github.asus4.onnxruntime-*.tgz)"
    check_sha256 "$tgz" "$ort_npm_sha256"
    # Only the pieces needed: one copy of the headers, the Linux x64 library, the licence texts.
    local headers="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers"
    tar -xzf "$tgz" -C "$tmp" "$headers" package/Plugins/Linux/x64 package/LICENSE package/ThirdPartyNotices.txt
    rm -rf "$out" && mkdir -p "$out/include" "$out/lib"
    cp "$tmp/$headers"/*.h "$out/include/"
    # Official releases ship libonnxruntime.so.X.Y.Z with .so.1 (the SONAME) and .so links.
    cp "$tmp/package/Plugins/Linux/x64/libonnxruntime.so" "$out/lib/libonnxruntime.so.$ort_version"
    ln -s "libonnxruntime.so.$ort_version" "$out/lib/libonnxruntime.so.1"
    ln -s "libonnxruntime.so.1" "$out/lib/libonnxruntime.so"
    cp "$tmp/package/LICENSE" "$tmp/package/ThirdPartyNotices.txt" "$out/"
    echo "$ort_version" >"$out/VERSION_NUMBER"
    rm -f "$tgz"
}

fetch_stb() {
    local tmp="$1" out="$dest/stb"
    need apt-get "stb_image.h comes from Debian's libstb-dev; or pass -DSTB_INCLUDE_DIR=<folder with stb_image.h>"
    echo "fetching $stb_deb from Debian ..." >&2
    # apt-get download needs the package lists; a fresh machine may not have them yet.
    if ! (cd "$tmp" && apt-get download -q "$stb_deb" >/dev/null 2>&1); then
        [ "$(id -u)" = 0 ] || die "apt-get download $stb_deb failed; run 'apt-get update' as root and retry"
        apt-get update -q >/dev/null
        (cd "$tmp" && apt-get download -q "$stb_deb" >/dev/null) || die "apt-get download $stb_deb failed"
    fi
    local deb
    deb="$(ls "$tmp"/libstb-dev_*.deb)"
    check_sha256 "$deb" "$stb_deb_sha256"
    dpkg-deb -x "$deb" "$tmp/stb"
    rm -rf "$out" && mkdir -p "$out/include"
    cp "$tmp/stb/usr/include/stb/stb_image.h" "$out/include/"
    cp "$tmp/stb/usr/share/doc/libstb-dev/copyright" "$out/"
}

stamp="$dest/.fetched"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$stamp_text" ]; then
    mkdir -p "$dest"
    tmp="$(mktemp -d "$dest/.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    start=$SECONDS
    mkdir "$tmp/ort" "$tmp/stb"
    fetch_onnxruntime "$tmp/ort"
    fetch_stb "$tmp/stb"
    echo "$stamp_text" >"$stamp"
    echo "fetched into $dest in $((SECONDS - start)) s" >&2
else
    echo "already fetched: $dest" >&2
fi

echo "configure with:" >&2
echo "  cmake -S examples/cpp -B examples/cpp/build -DCMAKE_BUILD_TYPE=Release" \
    "-DORT_ROOT=$dest/onnxruntime -DSTB_INCLUDE_DIR=$dest/stb/include" >&2
