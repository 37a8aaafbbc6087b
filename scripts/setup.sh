# Shared set-up for scripts/test, scripts/demo and scripts/bench: sourced, not run.
# On a fresh Debian machine it installs the system packages (as root) and a venv with fwfs.

_need_pkgs() {
    # Prints the Debian packages among "$@" that are not installed.
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

ensure_system_packages() {
    local missing
    missing=$(_need_pkgs "$@")
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "installing system packages: $missing" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
    else
        echo "fwfs needs these system packages; run:" >&2
        echo "    sudo apt-get install $missing" >&2
        return 1
    fi
}

ensure_venv() {
    # ensure_venv EXTRAS: a venv in .venv with fwfs installed editable with those extras.
    local extras=$1 py=${PYTHON:-python3} stamp want
    if [ ! -x .venv/bin/python ]; then
        if ! "$py" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            ensure_system_packages python3-venv
            "$py" -m venv .venv
        fi
    fi
    stamp=.venv/.fwfs-installed
    want="$extras $(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
        .venv/bin/python -m pip install -q --upgrade pip >&2
        .venv/bin/python -m pip install -q -e ".[$extras]" >&2
        echo "$want" > "$stamp"
    fi
}

# The official BIDS validator, the legacy JavaScript CLI (npm `bids-validator`), which
# tests/mount/test_bids_tools.py runs on the BIDS view of the demo. Pinned to the release the
# demo's curation was checked with (docs/SANDBOX.md); node >= 18. Lives in the checkout, not
# the system: BIDS_VALIDATOR_BIN.
BIDS_VALIDATOR_VERSION=1.14.6
BIDS_VALIDATOR_PREFIX=.cache/node
BIDS_VALIDATOR_BIN=$BIDS_VALIDATOR_PREFIX/node_modules/.bin/bids-validator

ensure_bids_validator() {
    # Installs only when the pinned version is not there yet: a second run reads one
    # package.json and touches no network.
    local installed=$BIDS_VALIDATOR_PREFIX/node_modules/bids-validator/package.json
    if [ -x "$BIDS_VALIDATOR_BIN" ] && [ -f "$installed" ] &&
        grep -q "\"version\": \"$BIDS_VALIDATOR_VERSION\"" "$installed"; then
        return 0
    fi
    # nodesource's nodejs ships npm inside it, and conflicts with Debian's npm package.
    if ! command -v npm >/dev/null; then
        ensure_system_packages nodejs npm
    fi
    echo "installing bids-validator $BIDS_VALIDATOR_VERSION into $BIDS_VALIDATOR_PREFIX" >&2
    # --omit=optional: next.js's native builds (~140 MB), which the CLI never loads.
    npm install --prefix "$BIDS_VALIDATOR_PREFIX" --save-exact --no-audit --no-fund \
        --omit=optional --loglevel=error "bids-validator@$BIDS_VALIDATOR_VERSION" >&2
}
