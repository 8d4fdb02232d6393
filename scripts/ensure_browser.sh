#!/usr/bin/env bash
# Makes sure Debian's chromium and chromium-driver are installed (the humaneval browser test drives them with
# Selenium, pointed at /usr/bin/chromedriver; nothing is downloaded outside the Debian archive).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium chromium-driver >/dev/null
/usr/bin/chromedriver --version
