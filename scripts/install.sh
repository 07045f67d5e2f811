#!/usr/bin/env bash
# Install everything vst and its tests need, from nothing; idempotent.
#   - .venv with the pinned Python packages (requirements.txt + the three
#     special cases below), vst itself in editable mode;
#   - Debian packages for firmware: the ARM GCC, newlib and QEMU.
# A second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
TORCH="torch==2.13.0"
LIRPA="auto-lirpa==0.3"
TFLM="tflite-micro==0.dev20261023182759"
APT_PKGS="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"

stamp_now=$(cat requirements.txt pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.vst-installed" 2>/dev/null)" != "$stamp_now" ]; then
    echo "install: Python packages into $VENV"
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" "$TORCH"                         # CPU wheel; alone so nothing pulls a CUDA build
    "${pip[@]}" -r requirements.txt
    "${pip[@]}" --pre "$TFLM"                    # TFLM's Python interpreter: pre-release only
    "${pip[@]}" --no-deps --no-build-isolation -e .
    # Last, so no later pip run reports its stale pins (torch<1.13, torchvision):
    # our compatibility layer (toolchain/lirpa/compat.py) mends it for torch 2.x.
    "${pip[@]}" --no-deps "$LIRPA"
    echo "$stamp_now" > "$VENV/.vst-installed"
fi

missing=()
command -v arm-none-eabi-gcc >/dev/null || missing+=(gcc-arm-none-eabi)
[ -f /usr/lib/arm-none-eabi/include/stdio.h ] || missing+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install: Debian packages ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null
    else
        echo "install: missing ${missing[*]}; firmware build and QEMU tests need them:" >&2
        echo "    sudo apt-get install --no-install-recommends $APT_PKGS" >&2
        [ "${CI:-}" != "true" ] || exit 1
    fi
fi
