#!/usr/bin/env bash
# Installs the system packages `phonerec synth-speech` needs, if any is missing:
#   flite         speech synthesizer (voices kal16, awb, rms, slt)
#   espeak-ng     speech synthesizer (en-us and its voice variants; libespeak-ng1 comes with it)
#   festival      speech synthesizer, with its US English voices festvox-kallpc16k (kal),
#                 festvox-kdlpc16k (ked) and festvox-us-slt-hts (slt)
#   fortunes-min  sentence source (fortunes, literature, riddles)
#   fortunes      sentence source (the other English fortune files)
# As root it runs apt-get; otherwise it prints the command to run and exits 1.
# Usage: bash scripts/install-speech-tools.sh [--check]   (--check: only report, exit 1 if missing)
set -euo pipefail

PACKAGES=(flite espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes-min fortunes)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "speech tools: all installed (${PACKAGES[*]})"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "speech tools missing: ${missing[*]}" >&2
    echo "this system has no apt-get: install flite, espeak-ng, festival (voices kal_diphone, ked_diphone, cmu_us_slt_arctic_hts) and the fortune files (fortunes-min, fortunes) with its package manager" >&2
    exit 1
fi

if [ "${1:-}" = "--check" ]; then
    echo "speech tools missing: ${missing[*]}" >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "speech tools missing: ${missing[*]}" >&2
    echo "run as root:  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "installing speech tools: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "speech tools installed: ${missing[*]}"
