#!/usr/bin/env bash
# Render a tunelab report (or any HTML file) to a PNG with headless Chromium.
#   scripts/screenshot_report.sh REPORT.html OUT.png [WIDTHxHEIGHT]   (default 1280x3000)
# Needs Chromium: on Debian/Ubuntu, `sudo apt-get install -y chromium`.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]" >&2
    exit 2
fi
report=$1
out=$2
size=${3:-1280x3000}

if [[ ! -f $report ]]; then
    echo "error: $report: no such file" >&2
    exit 2
fi
browser=""
for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then browser=$name; break; fi
done
if [[ -z $browser ]]; then
    echo "error: Chromium not found; install it with: sudo apt-get install -y chromium" >&2
    exit 2
fi

# Absolute paths: Chromium resolves file:// URLs and --screenshot relative to its own cwd.
report_abs=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
mkdir -p "$(dirname "$out")"
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

# --no-sandbox: needed when running as root (containers, CI); the page is a local file.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --screenshot="$out_abs" --window-size="${size/x/,}" "file://$report_abs" 2>/dev/null
[[ -s $out_abs ]] || { echo "error: Chromium wrote no screenshot" >&2; exit 1; }
echo "$out_abs"
