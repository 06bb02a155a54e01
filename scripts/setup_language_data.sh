#!/usr/bin/env bash
# Optional demo data for the language plugins (mimkit-text, flip, milan); idempotent, skips what
# is present. Not needed by the tests. Installs into ~/.cache/mimkit (no root needed):
#   - npm `emoji-datasource-google` (Noto emoji, 64 px, names + categories)  -> noto_emoji
#   - Debian `tuxpaint-stamps-default` (~785 captioned photos and clipart)    -> tuxpaint_stamps
# Nothing is downloaded at run time; the datasets only read these folders.
set -euo pipefail
CACHE=${MIMKIT_CACHE:-$HOME/.cache/mimkit}
mkdir -p "$CACHE"
if [ ! -f "$CACHE/node_modules/emoji-datasource-google/emoji.json" ]; then
  echo "[language-data] npm emoji-datasource-google@16.0.0 -> $CACHE/node_modules"
  (cd "$CACHE" && npm install --no-save --no-audit --no-fund --silent emoji-datasource-google@16.0.0)
fi
if [ ! -d /usr/share/tuxpaint/stamps ] && [ ! -d "$CACHE/tuxpaint/usr/share/tuxpaint/stamps" ]; then
  echo "[language-data] Debian tuxpaint-stamps-default -> $CACHE/tuxpaint"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download tuxpaint-stamps-default >/dev/null && dpkg-deb -x tuxpaint-stamps-default_*.deb "$CACHE/tuxpaint")
  rm -rf "$tmp"
fi
echo "[language-data] ready in $CACHE"
