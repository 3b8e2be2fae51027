#!/usr/bin/env bash
# Build the image with podman on a debootstrapped Debian base (no registry is needed) and run it
# the way a cluster would: read-only root filesystem, UID 65532, against the local PostgreSQL.
# Checks: exit 0; a second run is a no-op; any other UID works; SIGTERM in a slow revision gives 143.
# Prints the image size and the wall time of a no-op run. Needs root (debootstrap, podman).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=$PWD/tests/container/containers.conf
BASE=${BASE_IMAGE:-localhost/migration-runner-base:bookworm}
IMAGE=localhost/migration-runner:test
PG=${TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
say() { printf 'image-test: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

for tool in podman debootstrap runc psql; do command -v "$tool" >/dev/null || fail "$tool is not installed"; done

# Remove what this test made (about 750 MB): the image, its build stage, and the base if it built it.
made_base=0
cleanup_images() {
  podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
  podman image prune -f >/dev/null 2>&1 || true
  [ "$made_base" = 1 ] && [ -z "${KEEP_BASE_IMAGE:-}" ] && podman rmi -f "$BASE" >/dev/null 2>&1 || true
}
trap cleanup_images EXIT

if ! podman image exists "$BASE"; then
  made_base=1
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || fail "no Debian mirror in the apt sources"
  rootfs=$(mktemp -d)
  say "debootstrap bookworm (python3, python3-venv) from $mirror"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; fail "debootstrap"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q --change 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
fi

say "podman build --build-arg BASE_IMAGE=$BASE"
# This machine's CA bundle (it may trust a TLS-intercepting proxy) as a build secret, never a layer.
podman build -q --build-arg BASE_IMAGE="$BASE" --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt \
  -t "$IMAGE" . >/dev/null || fail "podman build"
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
say "image size: $((size / 1024 / 1024)) MiB"

db=mr_image_$RANDOM$RANDOM
psql "$PG" -qc "CREATE DATABASE $db"
trap 'psql "$PG" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; cleanup_images' EXIT
url=${PG%/*}/$db
work=$(mktemp -d)
cp -r examples/quickstart "$work/quickstart"
chmod -R a+rX "$work"
run() { # extra podman args, then the command
  podman run --rm --network=host --read-only --user 65532:65532 \
    -v "$work/quickstart:/migrations:ro" -e MIGRATION_DATABASE_URL="$url" "$@"
}

run "$IMAGE" > "$work/first.log" || fail "first run exited $?: $(tail -3 "$work/first.log")"
grep -q '"event": "revision.applied"' "$work/first.log" || fail "first run applied nothing"
[ "$(psql "${url}" -tAc 'SELECT version_num FROM alembic_version')" = 0003 ] || fail "database not at 0003"
start=$EPOCHREALTIME
run "$IMAGE" > "$work/second.log" || fail "second run exited $?"
noop=$(awk "BEGIN {printf \"%.3f\", $EPOCHREALTIME - $start}")
grep -q '"event": "upgrade.noop"' "$work/second.log" || fail "second run was not a no-op"
say "no-op run inside the container: ${noop} s wall"
podman run --rm --network=host --read-only --user 123456:0 -v "$work/quickstart:/migrations:ro" \
  -e MIGRATION_DATABASE_URL="$url" "$IMAGE" check > /dev/null || fail "check as an arbitrary UID"

# SIGTERM during a slow revision: a fourth revision that sleeps in the database.
cat > "$work/quickstart/migrations/versions/0004_slow.py" <<'PY'
"""sleep in the database

Revision ID: 0004
Revises: 0003
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("SELECT pg_sleep(60)")


def downgrade():
    pass
PY
chmod a+r "$work/quickstart/migrations/versions/0004_slow.py"
run --name mr-sigterm -d "$IMAGE" > /dev/null
for _ in $(seq 1 100); do
  [ "$(psql "$url" -tAc "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'")" = 1 ] && break
  sleep 0.2
done
sent=$EPOCHREALTIME
podman kill --signal TERM mr-sigterm > /dev/null
code=$(podman wait mr-sigterm)
took=$(awk "BEGIN {printf \"%.3f\", $EPOCHREALTIME - $sent}")
[ "$code" = 143 ] || fail "SIGTERM gave exit $code, not 143"
[ "$(psql "$url" -tAc 'SELECT version_num FROM alembic_version')" = 0003 ] || fail "revision 0004 was not rolled back"
say "SIGTERM in a slow revision: exit $code after ${took} s, database still at 0003"
rm -rf "$work"
say "OK"
