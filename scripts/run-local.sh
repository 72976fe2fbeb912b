#!/usr/bin/env bash
# The README's run command: the whole system in one process on http://localhost:8000.
# With DATABASE_URL unset windi runs its own Postgres (./.windi); set it to use another.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f .env ]; then
  cp .env.example .env
  echo "created .env from .env.example (development settings with a fake JWT secret)"
fi
exec cargo run --release -p windi -- "$@"
