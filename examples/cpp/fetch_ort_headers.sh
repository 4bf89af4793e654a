#!/usr/bin/env bash
# Put ONNX Runtime's C/C++ headers in DEST/include, from a package registry these machines reach.
#
#   examples/cpp/fetch_ort_headers.sh DEST
#
# Why this package: ONNX Runtime's headers are in no Debian package, PyPI wheel or onnxruntime-* npm
# package here. The npm package com.github.asus4.onnxruntime (a Unity plug-in, MIT) bundles ONNX
# Runtime's official iOS framework, whose Headers/ folder holds the unmodified public headers
# (ORT_API_VERSION 29). The headers are the same on every platform, and the C API is backward compatible,
# so they build a program that runs against the newer libonnxruntime.so inside the PyPI `onnxruntime`
# wheel. Nothing from that package is committed to this repository.
set -euo pipefail
dest=${1:?usage: fetch_ort_headers.sh DEST}
package=com.github.asus4.onnxruntime@0.4.9
headers='package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/onnxruntime.framework/Headers'
if [ -f "$dest/include/onnxruntime_cxx_api.h" ]; then
  echo "headers already in $dest/include"; exit 0
fi
command -v npm >/dev/null || { echo "error: npm not found; install Node.js (npm) to fetch the headers" >&2; exit 2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar xzf "$work"/*.tgz -C "$work" "$headers"
mkdir -p "$dest.tmp" && rm -rf "$dest.tmp/include" && mv "$work/$headers" "$dest.tmp/include"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "ONNX Runtime headers ($(grep -m1 -o 'ORT_API_VERSION [0-9]*' "$dest/include/onnxruntime_c_api.h")) in $dest/include"
