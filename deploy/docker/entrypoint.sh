#!/bin/sh
# Container entry point: the first argument picks a service to serve or the migration to run.
set -eu
case "${1:-}" in
    connections | invitations | notifier)
        service="$1"
        shift
        exec python -m "services.${service}" "$@"
        ;;
    migrate)
        shift
        exec python -m collabkare.cli migrate "$@"
        ;;
    *)
        echo "usage: connections | invitations | notifier | migrate {connections|invitations|notifier}" >&2
        exit 64
        ;;
esac
