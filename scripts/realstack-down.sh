#!/usr/bin/env bash
# Stop the real-stack daemons a test run started and left running (tests run with
# KVM_REALSTACK_KEEP=1 share one libvirtd across test packages), and remove leftover
# multi-host namespaces from a crashed run. Only processes recorded in realstack's
# own PID files are signalled; a libvirtd started by anyone else is left alone.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec go run ./internal/realstack/cmd/realstack-down
