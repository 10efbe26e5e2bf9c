#!/bin/sh
# Entrypoint of the GLS image: runs its arguments, e.g. `python -m services.gateway` or `gls <verb>`.
#
# A bound worker registers GLS_WORKER_ADVERTISE in Redis as the address the coordinator and the
# gateway dial. Kubernetes sets it from the pod IP (downward API); docker compose cannot give each
# replica of a scaled service its own value, so when it is unset a worker advertises this
# container's own IP address on the compose network, with GLS_WORKER_PORT.
set -eu
if [ -z "${GLS_WORKER_ADVERTISE:-}" ]; then
  case " $* " in
    *services.bound_worker*|*" worker "*)
      # the IP the container's hostname resolves to (Docker writes it to /etc/hosts); else the hostname
      host="$(python -c 'import socket
name = socket.gethostname()
try:
    print(socket.gethostbyname(name))
except OSError:
    print(name)')"
      GLS_WORKER_ADVERTISE="${host}:${GLS_WORKER_PORT:-50051}"
      export GLS_WORKER_ADVERTISE
      ;;
  esac
fi
exec "$@"
