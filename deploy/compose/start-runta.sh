#!/bin/sh
# Creates the demo's master key, operator token and HTTPS interception CA on first start (a
# PostgreSQL deployment generates nothing itself), then runs the server.
set -eu
umask 077
[ -f /data/master.key ] || runta keys generate --out /data/master.key
[ -f /data/operator-token ] || head -c 30 /dev/urandom | base64 | tr -d '+/=\n' | sed 's/^/runta_op_/' > /data/operator-token
[ -f /data/ca.key ] || runta ca generate --cert-out /data/ca.pem --key-out /data/ca.key
exec runta serve --config /etc/runta/runta.toml
