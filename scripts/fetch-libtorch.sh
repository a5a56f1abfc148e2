#!/usr/bin/env bash
# Provision the lean libtorch 2.11.0 that tch 0.24 builds against, from PyPI (the libtorch download
# site is unreachable here). Only headers, libtorch_cpu/libtorch/libc10/libgomp and the two CUDA
# runtime libraries libtorch_cpu needs at load time are kept (~470 MB instead of ~2.5 GB).
#
# Idempotent (a complete install is marked by .complete and costs nothing to re-check), verified by
# sha256, unpacked into a temp dir beside the target and renamed into place, and serialised with
# flock so two racing runs do the work once.
#
# Usage: scripts/fetch-libtorch.sh [--print-dir]
# Env:   LIBRE_CACHE (default ${XDG_CACHE_HOME:-~/.cache}/libre), LIBRE_PIP (default: python3 -m pip)
set -euo pipefail

CACHE="${LIBRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libre}"
DEST="$CACHE/libtorch-2.11.0"
PIP="${LIBRE_PIP:-python3 -m pip}"

# name==version  wheel-platform  sha256
WHEELS=(
  "torch==2.11.0 manylinux_2_28_x86_64 7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a"
  "nvidia-cuda-runtime==13.0.96 manylinux_2_17_x86_64 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cupti==13.0.85 manylinux_2_25_x86_64 4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8"
)

say() { [ -n "${QUIET:-}" ] || echo "fetch-libtorch: $*" >&2; }

if [ -f "$DEST/.complete" ]; then
  [ "${1:-}" = "--print-dir" ] && echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.libtorch.lock"
flock 9
if [ -f "$DEST/.complete" ]; then # another run finished while we waited
  [ "${1:-}" = "--print-dir" ] && echo "$DEST"
  exit 0
fi

TMP="$(mktemp -d "$CACHE/.libtorch-tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/dl" "$TMP/out/lib" "$TMP/unz"

for entry in "${WHEELS[@]}"; do
  read -r spec plat sha <<<"$entry"
  say "pip download $spec ($plat)"
  if ! $PIP download --quiet --no-deps --only-binary=:all: --platform "$plat" \
      --python-version 3.11 --implementation cp --abi cp311 "$spec" -d "$TMP/dl" >&2; then
    echo "fetch-libtorch: could not download $spec from PyPI; run: $PIP download --no-deps $spec" >&2
    exit 2
  fi
  name="${spec%%==*}"; name="${name//-/_}"
  whl=$(ls "$TMP"/dl/"$name"-*.whl)
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "fetch-libtorch: sha256 mismatch for $(basename "$whl"): expected $sha, got $got" >&2
    exit 2
  fi
done

say "unpacking"
python3 - "$TMP" <<'PY'
import sys, zipfile, glob, os, shutil
tmp = sys.argv[1]
out = os.path.join(tmp, "out")
keep_lib = {"libtorch_cpu.so", "libtorch.so", "libc10.so", "libgomp.so.1"}
for whl in glob.glob(os.path.join(tmp, "dl", "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            n = info.filename
            base = os.path.basename(n)
            if n.startswith("torch/include/") and not n.endswith("/"):
                target = os.path.join(out, n[len("torch/"):])
            elif n.startswith("torch/lib/") and base in keep_lib:
                target = os.path.join(out, "lib", base)
            elif base in ("libcudart.so.13", "libcupti.so.13"):
                target = os.path.join(out, "lib", base)
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
echo "2.11.0" > "$TMP/out/build-version"
touch "$TMP/out/.complete"
rm -rf "$DEST"
mv "$TMP/out" "$DEST"
say "installed $DEST"
[ "${1:-}" = "--print-dir" ] && echo "$DEST"
exit 0
