#!/usr/bin/env bash
# Debian's nginx: the front `shopsearch serve` runs by default, and the slow-client test.
# The package's own service is not used: `shopsearch serve` runs nginx unprivileged from a
# private prefix (webapp/front.py).
set -u
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian nginx for the web front and its tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null) \
    || echo "warning: could not install nginx; the slow-client test will be skipped" >&2
else
  echo "warning: nginx not installed and not root; the slow-client test will be skipped" >&2
fi
exit 0
