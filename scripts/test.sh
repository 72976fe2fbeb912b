#!/usr/bin/env bash
# The test command: `scripts/test.sh [cargo test arguments]`.
#
# Checks what the tests need before running any of them, installs what is missing where it
# can (Debian and Ubuntu: one `apt-get install`, through sudo when not root; elsewhere it names
# the one command and stops), fetches the browser test's one npm package, then runs
# `cargo test --workspace` with the arguments given. The tests then start their own Postgres
# cluster and nats-server on free loopback ports (embedded/src/test_services.rs), so nothing
# needs to be running; TEST_DATABASE_URL and TEST_NATS_URL point them at servers that do.
# CI (.ci/run) runs this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

have_postgres() {
  [ -n "${TEST_DATABASE_URL:-}" ] && return 0
  if [ -n "${POSTGRES_BIN_DIR:-}" ]; then [ -x "$POSTGRES_BIN_DIR/initdb" ]; return; fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
    compgen -G '/opt/homebrew/opt/postgresql*/bin/initdb' >/dev/null ||
    compgen -G '/usr/local/opt/postgresql*/bin/initdb' >/dev/null || have initdb
}

have_nats() {
  [ -n "${TEST_NATS_URL:-}" ] && return 0
  if [ -n "${NATS_SERVER_BIN:-}" ]; then [ -x "$NATS_SERVER_BIN" ]; return; fi
  have nats-server || [ -x /usr/sbin/nats-server ] || [ -x /usr/local/sbin/nats-server ]
}

have_chromium() { [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; }

missing=()   # package names as Debian spells them
what=()      # what each is for, for the message
have_postgres || { missing+=(postgresql); what+=("PostgreSQL's server binaries"); }
have_nats || { missing+=(nats-server); what+=("nats-server"); }
have_chromium || { missing+=(chromium); what+=("Chromium (the browser test)"); }
{ have node && have npm; } || { missing+=(nodejs npm); what+=("Node.js with npm (the browser test)"); }
# The test servers' reaper (embedded/src/test_services.rs) uses util-linux's flock and setsid.
{ have flock && have setsid; } || { missing+=(util-linux); what+=("flock and setsid"); }

if [ ${#missing[@]} -gt 0 ]; then
  joined=$(printf '%s, ' "${what[@]}")
  echo "scripts/test.sh: the tests need ${joined%, }, which this machine lacks."
  if [ -f /etc/debian_version ] && have apt-get; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
      have sudo || { echo "install them as root: apt-get install ${missing[*]}" >&2; exit 1; }
      sudo=sudo
    fi
    echo "installing: $sudo apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    case "$(uname -s)" in
      Darwin) hint="brew install postgresql@16 nats-server node && brew install --cask chromium" ;;
      *) hint="install the packages named above with your system's package manager" ;;
    esac
    echo "install them with: $hint (then run scripts/test.sh again)" >&2
    exit 1
  fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "scripts/test.sh: note: Node.js $(node --version) is older than e2e/package.json's 20; the browser test may fail"
fi

# The browser test's one package (playwright-core, pinned by the lock file; no browser is
# downloaded: the test drives the machine's Chromium).
if [ ! -d e2e/node_modules/playwright-core ] ||
  [ e2e/package-lock.json -nt e2e/node_modules/.package-lock.json ]; then
  npm ci --prefix e2e --no-audit --no-fund --loglevel=error
fi

exec cargo test --workspace "$@"
