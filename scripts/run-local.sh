#!/usr/bin/env bash
# The README's run command: the whole system in one process on http://localhost:8000.
# Needs only a reachable Postgres (DATABASE_URL); the database is created and migrated on start.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .env ]; then
  cp .env.example .env
  echo "created .env from .env.example (development settings with a fake JWT secret)"
fi
exec cargo run --release -p windi -- "$@"
