#!/usr/bin/env bash
# Logs in through the auth function and writes the token into every event that needs one.
#
# Run it while `cargo lambda watch` serves the functions, after events/auth-register.json:
#   events/authorize.sh            # logs in with events/auth-login.json (Alice)
#   events/authorize.sh TOKEN      # or uses a token you already have
# It rewrites the `authorization` header (and the v1 `multiValueHeaders` copy) in place; the
# token is only valid for the JWT_SECRET_KEY it was made with and for ACCESS_TOKEN_EXPIRE_MINUTES.
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -ge 1 ]; then
  token=$1
else
  answer=$(cargo lambda invoke windi-auth --data-file auth-login.json)
  # The answer is API Gateway's response event; its body is the JSON of /auth/login as a string.
  token=$(printf '%s' "$answer" | sed -nE 's/.*access_token[^A-Za-z0-9]+([A-Za-z0-9._-]+).*/\1/p')
  if [ -z "$token" ]; then
    echo "login failed: $answer" >&2
    exit 1
  fi
fi

for event in *.json; do
  # Every "Bearer ..." string is an authorization header value (v2 headers, v1 both copies).
  sed -i -E "s/\"Bearer [^\"]*\"/\"Bearer ${token}\"/" "$event"
done
echo "token written into: $(grep -l -i '"authorization"' -- *.json | tr '\n' ' ')"
