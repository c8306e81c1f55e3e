#!/usr/bin/env bash
# Installs the Debian packages that building and testing mnc need, when any is missing.
# Runs apt-get as root directly, or through sudo for other users.
set -euo pipefail

packages=(
    libjpeg-dev      # JPEG decoding in the image classifier and `mnc run --image`
    llvm-14-dev      # the LLVM backend (LLVM's C API, libLLVM-14)
    libpng-dev       # PNG decoding
    zlib1g-dev       # libpng's compression library
    gcc-aarch64-linux-gnu   # LLVMBackendTests: links the aarch64 build of a network
    libc6-dev-arm64-cross   # the aarch64 C library that build links against
    qemu-user               # qemu-aarch64 runs that build on this machine
)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "installing: ${missing[*]}"
run=()
if [ "$(id -u)" -ne 0 ]; then
    run=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -q
"${run[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
