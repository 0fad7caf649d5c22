#!/bin/sh
# Entrypoint of every vterm container (web, backend worker, beat, flower, migrate).
# Prepares the data directory, then becomes the given command (exec), so that the process
# itself receives SIGTERM from Docker or Kubernetes and can drain its sessions.
set -eu

: "${VTERM_DATA_DIR:=/var/lib/vterm}"
export VTERM_DATA_DIR
# tmux sockets live here; a fresh emptyDir or volume may not have it yet.
mkdir -p "$VTERM_DATA_DIR"

exec "$@"
