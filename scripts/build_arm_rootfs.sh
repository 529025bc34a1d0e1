#!/usr/bin/env bash
# Build an arm64 Debian root in which the benchmark runner runs under qemu user-mode emulation.
#
#   scripts/build_arm_rootfs.sh [DEST]        (default .cache/arm64-rootfs; `make arm-rootfs` calls this)
#
# 1. debootstrap --foreign --arch arm64 (minbase + python3), built into DEST.tmp and renamed when complete.
# 2. Second stage: the real `debootstrap --second-stage` in a chroot when the kernel has a qemu-aarch64
#    binfmt handler; otherwise (containers, where registering one would change the host kernel) the
#    downloaded packages are unpacked with dpkg-deb and ldconfig runs under qemu. Maintainer scripts do
#    not run in that case, which the runner does not need.
# 3. aarch64 wheels (numpy, onnxruntime, ai-edge-litert) from `pip download --platform manylinux_*_aarch64
#    --only-binary=:all:`, installed into the root's /usr/local (no code runs at install time).
set -euo pipefail
DEST=${1:-.cache/arm64-rootfs}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PIP=${PIP:-.venv/bin/python -m pip}
WHEELS=${WHEELS:-"numpy==2.4.6 onnxruntime==1.32.0 ai-edge-litert==2.3.0"}
TMP="$DEST.tmp"
start=$(date +%s)

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  "$(dirname "$0")/system_packages.sh" "${need[@]}"
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: building the arm64 root needs root (debootstrap, chroot); run 'sudo make arm-rootfs'" >&2
  exit 2
fi

rm -rf "$TMP"
mkdir -p "$(dirname "$DEST")"
echo "[1/3] debootstrap --foreign --arch arm64 $SUITE -> $TMP"
debootstrap --foreign --arch arm64 --variant=minbase --include=python3 "$SUITE" "$TMP" "$MIRROR" >"$DEST.log" 2>&1 \
  || { echo "debootstrap failed; last lines of $DEST.log:" >&2; tail -20 "$DEST.log" >&2; exit 1; }
cp "$(command -v qemu-aarch64-static)" "$TMP/usr/bin/"

if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  echo "[2/3] second stage in chroot (binfmt qemu-aarch64 registered)"
  chroot "$TMP" /debootstrap/debootstrap --second-stage >>"$DEST.log" 2>&1 \
    || { echo "second stage failed; see $DEST.log" >&2; tail -20 "$DEST.log" >&2; exit 1; }
  mode=second-stage
else
  echo "[2/3] no qemu-aarch64 binfmt handler: unpacking packages with dpkg-deb, ldconfig under qemu"
  for deb in "$TMP"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$TMP"; done
  chroot "$TMP" /usr/bin/qemu-aarch64-static /sbin/ldconfig
  mode=unpacked
fi
rm -rf "$TMP"/var/cache/apt/archives/*.deb

echo "[3/3] aarch64 wheels: $WHEELS"
site="$TMP/usr/local/lib/python3.11/dist-packages"
mkdir -p "$site"
platforms=""
for p in manylinux_2_36_aarch64 manylinux_2_35_aarch64 manylinux_2_34_aarch64 manylinux_2_31_aarch64 \
         manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64; do
  platforms+=" --platform $p"
done
# shellcheck disable=SC2086
$PIP install --quiet --disable-pip-version-check --no-warn-conflicts --no-compile --target "$site" $platforms \
  --only-binary=:all: --python-version 3.11 --implementation cp $WHEELS

chroot "$TMP" /usr/bin/qemu-aarch64-static /usr/bin/python3 -c \
  'import numpy, onnxruntime, ai_edge_litert.interpreter, platform; print("arm64 root ok:", platform.machine(), "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'
end=$(date +%s)
printf '{"suite": "%s", "second_stage": "%s", "wheels": "%s", "build_seconds": %d}\n' \
  "$SUITE" "$mode" "$WHEELS" $((end - start)) > "$TMP/compressor-rootfs.json"
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "arm64 root ready in $DEST ($((end - start)) s)"
