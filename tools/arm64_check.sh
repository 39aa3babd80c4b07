#!/usr/bin/env bash
# The Raspberry Pi path, checked for correctness on emulated aarch64 (not for speed).
#
#   sudo tools/arm64_check.sh [--suites "bookworm trixie"] [--images N] [ARTIFACT ...]
#
# Builds the edgeres wheel here, makes (once, cached) Debian arm64 root filesystems with
# debootstrap (bookworm is Raspberry Pi OS Bookworm's base, Python 3.11; trixie has 3.13),
# installs the wheel there with [rpi,onnx] as a Pi user would, and runs `edgeres verify`
# and `edgeres predict` / `edgeres eval` on artifacts converted here on x86, requiring the
# same top-1 as on x86 for every image checked (--images N of the held-out set, evenly spaced;
# 0 for all of them). Without ARTIFACTs it converts the built-in
# digits model (rpi5 INT8 .tflite and npu INT8 .onnx) with this checkout's .venv.
#
# Needs root (debootstrap, chroot, binfmt), debootstrap, and qemu-user-static 8 or newer:
# Debian 12's own qemu 7.2 crashes inside ai-edge-litert 2.3.0's interpreter, so on Debian 12
#   echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/backports.list
#   apt-get update && apt-get install -t bookworm-backports qemu-user-static && apt-get install debootstrap
# The root filesystems and the x86 artifacts are cached in $EDGERES_ARM64_CACHE
# (default ~/.cache/edgeres/arm64); a first run takes 10-20 minutes, later ones a few.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${EDGERES_ARM64_CACHE:-$HOME/.cache/edgeres/arm64}
SUITES="bookworm trixie"
IMAGES=100
ARTIFACTS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --suites) SUITES=$2; shift 2 ;;
        --images) IMAGES=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARTIFACTS+=("$(realpath "$1")"); shift ;;  # relative to where it was called from
    esac
done
cd "$REPO"

fail() { echo "arm64_check: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || fail "run as root: debootstrap, chroot and binfmt registration need it"
command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap"
QEMU=$(command -v qemu-aarch64-static || true)
[ -n "$QEMU" ] || fail "qemu-user-static is missing: install it from bookworm-backports (see the top of $0)"
QEMU_MAJOR=$("$QEMU" --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
[ "${QEMU_MAJOR:-0}" -ge 8 ] || fail "qemu $QEMU_MAJOR crashes inside ai-edge-litert; install 10.x from bookworm-backports"

register_binfmt() {
    # F: the kernel opens the interpreter now, so it also runs inside a chroot that lacks it.
    local conf=/usr/lib/binfmt.d/qemu-aarch64.conf entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        fail "cannot mount binfmt_misc (a container without the privilege?)"
    if [ -e "$entry" ] && grep -q "flags: .*F" "$entry"; then return; fi
    [ -e "$entry" ] && echo -1 > "$entry"
    [ -f "$conf" ] || fail "$conf is missing (it comes with qemu-user-static)"
    printf ':qemu-aarch64:M::%s:%s:%s:F' "$(cut -d: -f5 "$conf")" "$(cut -d: -f6 "$conf")" "$QEMU" \
        > /proc/sys/fs/binfmt_misc/register
}

make_rootfs() {  # $1 suite -> its cached root filesystem
    local suite=$1 root=$CACHE/rootfs-$1
    if [ ! -f "$root/.edgeres-ready" ]; then
        echo "== debootstrap $suite arm64 (once; minutes under emulation)"
        rm -rf "$root.partial"
        debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$suite" "$root.partial" http://deb.debian.org/debian > "$CACHE/debootstrap-$suite.log" 2>&1 ||
            fail "debootstrap $suite failed; see $CACHE/debootstrap-$suite.log"
        rm -rf "$root" && mv "$root.partial" "$root" && touch "$root/.edgeres-ready"
    fi
}

in_root() {  # $1 root, then a command run there with a clean environment (but the host's proxy and index)
    local root=$1; shift
    local keep=() name
    for name in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL; do
        [ -n "${!name:-}" ] && [[ "${!name}" != *file://* ]] && keep+=("$name=${!name}")
    done
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_CERT=/opt/edgeres-check/ca.crt "${keep[@]}" chroot "$root" /bin/bash -c "set -eo pipefail; $*"
}

mounted=()
work=
# The binfmt entry registered here stays (other emulation on this machine may use it too).
cleanup() {
    for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
    [ -z "$work" ] || rm -rf "$work"
}
trap cleanup EXIT

x86_artifacts() {  # the built-in digits model, converted here on x86 (cached by checkout)
    local out=$CACHE/x86-$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo tree)
    if [ ! -f "$out/.done" ]; then
        rm -rf "$out" && mkdir -p "$out"
        "$REPO/.venv/bin/python" - "$out" <<'PY'
import sys
from pathlib import Path
from edgeres.conversion.pipeline import ConvertOptions, convert
from edgeres.demo import DEMO_IMGSZ, digits_dataset, train_digits_resnet
from edgeres.models import load_model
out = Path(sys.argv[1])
data = digits_dataset(out / "digits")
train_digits_resnet(data, out / "digits.pt", imgsz=DEMO_IMGSZ)
model = load_model(out / "digits.pt", "resnet18", labels=data.labels_file)
for target in ("rpi5", "npu"):
    convert(model, ConvertOptions(target=target, precision="int8", calib=data.train_dir, imgsz=DEMO_IMGSZ,
                                  out_dir=out / "artifacts", report=False), log=lambda m: None)
PY
        touch "$out/.done"
    fi
    ARTIFACTS=("$out"/artifacts/*/*_int8.tflite "$out"/artifacts/*/*_int8.onnx)
    HELD_OUT=$out/digits/test
}

mkdir -p "$CACHE"
register_binfmt
HELD_OUT=${EDGERES_ARM64_IMAGES:-}
[ ${#ARTIFACTS[@]} -gt 0 ] || x86_artifacts
[ -n "$HELD_OUT" ] || fail "give the held-out images as EDGERES_ARM64_IMAGES=DIR (DIR/<label>/*.png)"

work=$(mktemp -d)
echo "== wheel"
"$REPO/.venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$work/dist" "$REPO" >/dev/null
wheel=$(basename "$work"/dist/edgeres-*.whl)
# The same images on both sides: $IMAGES of the held-out set, evenly spaced over its sorted list
# (so every class is in), or all of them with --images 0.
mkdir -p "$work/images"
total=$(find "$HELD_OUT" -name '*.png' | wc -l)
step=$(( IMAGES > 0 && total > IMAGES ? total / IMAGES : 1 ))
find "$HELD_OUT" -name '*.png' | sort | awk -v step="$step" 'NR % step == 0' |
    while read -r image; do
        label=$(basename "$(dirname "$image")"); mkdir -p "$work/images/$label"; cp "$image" "$work/images/$label/"
    done
echo "== x86 answers ($(find "$work/images" -name '*.png' | wc -l) images)"
for artifact in "${ARTIFACTS[@]}"; do
    (cd "$work" && "$REPO/.venv/bin/edgeres" predict "$artifact" images --json --topk 2) > "$work/$(basename "$artifact").x86.json"
done

status=0
for suite in $SUITES; do
    make_rootfs "$suite"
    root=$CACHE/rootfs-$suite
    for fs in proc sys dev; do mountpoint -q "$root/$fs" || { mount --bind "/$fs" "$root/$fs"; mounted+=("$root/$fs"); }; done
    rm -rf "$root/opt/edgeres-check" && mkdir -p "$root/opt/edgeres-check/art"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # The host's CA bundle: a machine behind a TLS-inspecting proxy reaches PyPI only with it.
    cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$root/opt/edgeres-check/ca.crt"
    cp "$work/dist/$wheel" "$root/opt/edgeres-check/"
    cp -r "$work/images" "$root/opt/edgeres-check/images"
    for artifact in "${ARTIFACTS[@]}"; do  # the artifact's files: its .bin, record, golden samples
        cp "$(dirname "$artifact")/$(basename "${artifact%.*}")".* "$root/opt/edgeres-check/art/"
    done
    echo "== $suite: install $wheel[rpi,onnx]"
    # The venv stays between runs, so its dependencies are installed once; edgeres itself is
    # reinstalled from this wheel every time (same version number, new code).
    in_root "$root" "python3 --version; python3 -m venv /opt/edgeres && /opt/edgeres/bin/pip install --quiet \
        '/opt/edgeres-check/$wheel[rpi,onnx]' && /opt/edgeres/bin/pip install --quiet --no-deps --force-reinstall \
        /opt/edgeres-check/$wheel && /opt/edgeres/bin/edgeres --version"
    for artifact in "${ARTIFACTS[@]}"; do
        name=$(basename "$artifact")
        echo "== $suite: $name"
        in_root "$root" "cd /opt/edgeres-check && /opt/edgeres/bin/edgeres verify art/$name && \
            /opt/edgeres/bin/edgeres eval art/$name --data images | tail -n 3 && \
            /opt/edgeres/bin/edgeres predict art/$name images --json --topk 1 > $name.arm64.json"
        if ! python3 - "$work/$name.x86.json" "$root/opt/edgeres-check/$name.arm64.json" "$suite" "$name" <<'PY'
import json, sys
# An image whose two best classes tie exactly on x86 (int8 scores are coarse) has no single
# top-1 there; emulated ARM may break the tie either way, so either tied class counts as the same.
x86, arm = (json.load(open(path)) for path in sys.argv[1:3])
same, ties, differ = 0, [], []
for image, ours in x86.items():
    theirs = arm.get(image, [{"index": None}])[0]["index"]
    tied = len(ours) > 1 and ours[0]["probability"] == ours[1]["probability"]
    if theirs == ours[0]["index"]:
        same += 1
    elif tied and theirs == ours[1]["index"]:
        ties.append(image)
    else:
        differ.append(image)
print(f"{sys.argv[3]} {sys.argv[4]}: same top-1 as x86 on {same + len(ties)} of {len(x86)} images"
      + (f" ({len(ties)} an exact tie on x86, broken the other way: {', '.join(ties)})" if ties else ""))
for image in differ:
    print(f"  differs: {image}: x86 {x86[image][0]['label']}, arm64 {arm[image][0]['label']}")
sys.exit(1 if differ or set(x86) != set(arm) else 0)
PY
        then status=1; fi
    done
done
[ $status = 0 ] && echo "arm64_check: passed" || echo "arm64_check: FAILED (top-1 differs from x86)"
exit $status
