#!/bin/sh
# natkit's container entrypoint (packaging/docker/Dockerfile). PID 1 must be natkit itself, so
# SIGTERM (docker stop, a Kubernetes rollout) reaches it and drains the allocations: exec.
#   serve [ARGS]   check $NATKIT_CONFIG, then natkit serve -c $NATKIT_CONFIG ARGS (the default)
#   ANYTHING ELSE  natkit ANYTHING ELSE (natkit cluster status, natkit turn credentials, ...)
set -eu
: "${NATKIT_CONFIG:=/etc/natkit/natkit.yaml}"
export NATKIT_CONFIG
if [ "$(id -u)" = 0 ] && [ "${NATKIT_ALLOW_ROOT:-0}" != 1 ]; then
  echo "natkit-entrypoint: refusing to run as root; run as the image's user (uid 10001)," \
       "or set NATKIT_ALLOW_ROOT=1" >&2
  exit 2
fi
if [ "$#" = 0 ] || [ "$1" = serve ]; then
  [ "$#" = 0 ] || shift
  if [ ! -r "$NATKIT_CONFIG" ]; then
    echo "natkit-entrypoint: no readable config at $NATKIT_CONFIG; mount one" \
         "(-v ./natkit.yaml:/etc/natkit/natkit.yaml:ro) or set NATKIT_CONFIG" >&2
    exit 2
  fi
  exec natkit serve -c "$NATKIT_CONFIG" "$@"
fi
exec natkit "$@"
