#!/usr/bin/env bash
# Runs the kernels' tests on the NEON path: cross-built for aarch64 Linux and run under
# user-mode QEMU, so an x86 machine checks that every NEON kernel gives the portable
# loop's results (bit for bit where the tests ask for it).
#
# Needs (Debian): qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross,
# and `rustup target add aarch64-unknown-linux-gnu`.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in qemu-aarch64-static aarch64-linux-gnu-gcc; do
  command -v "$tool" >/dev/null || {
    echo "test-neon: $tool is missing (apt-get install qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2
    exit 2
  }
done
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || {
  echo "test-neon: the aarch64-unknown-linux-gnu target is missing (rustup target add aarch64-unknown-linux-gnu)" >&2
  exit 2
}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
exec cargo test --release --target aarch64-unknown-linux-gnu -p kernels "$@"
