#!/usr/bin/env bash
# The secrets docker-compose.yml needs, random, in an env file that compose reads:
#
#   containers/compose-env.sh [FILE]        (FILE: default .env beside docker-compose.yml)
#
# Writes POSTGRES_PASSWORD, READ_STORE_PASSWORD, KEY_STORE_PASSWORD, AUTH_HS256_SECRET (hex; the
# last signs and verifies the services' bearer tokens: `esctl token` with it in the environment)
# and KEY_ENCRYPTION_KEY (base64 of 32 random bytes: the key store's key-encryption key) when FILE does not have them;
# a value already there is never changed (a new KEY_ENCRYPTION_KEY would leave every stored key
# unreadable; new passwords would not match the database made with the old ones). The file is
# made with mode 0600. Keep a copy of KEY_ENCRYPTION_KEY apart from the database's backups.
set -euo pipefail
umask 077
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FILE="${1:-$ROOT/.env}"

hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
kek() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }

touch "$FILE"
chmod 600 "$FILE"
added=()
for name in POSTGRES_PASSWORD READ_STORE_PASSWORD KEY_STORE_PASSWORD AUTH_HS256_SECRET KEY_ENCRYPTION_KEY; do
    if grep -q "^${name}=." "$FILE"; then continue; fi
    if [ "$name" = KEY_ENCRYPTION_KEY ]; then value="$(kek)"; else value="$(hex 24)"; fi
    printf '%s=%s\n' "$name" "$value" >>"$FILE"
    added+=("$name")
done
if ((${#added[@]})); then
    echo "compose-env: wrote ${added[*]} to $FILE (mode 0600)" >&2
else
    echo "compose-env: $FILE has every variable already; nothing changed" >&2
fi
