#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
# One build serves every test binary: clippy checks, then one `cargo nextest run` builds the
# workspace's tests (including the crash-test target binary and the bench smoke test) in
# the test profile, then doc tests. Nothing is built twice with different features.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_INCREMENTAL=0
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1

step() { printf '\n==> %s\n' "$*"; }

if ! cargo nextest --version >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

step "rustfmt"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- Tools the tests run ------------------------------------------------------------------
# curl (the README quickstart's curl call), openssl (a TLS server for the CLI's https test),
# script (a pseudo-terminal for the CLI's colour test). Installed when missing.
tools=()
command -v curl >/dev/null 2>&1 || tools+=(curl)
command -v openssl >/dev/null 2>&1 || tools+=(openssl)
command -v script >/dev/null 2>&1 || tools+=(bsdutils)
if ((${#tools[@]})); then
    step "installing ${tools[*]} (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tools[@]}" >/dev/null; } \
        || { printf '\nERROR: apt-get install %s failed; tests need them\n' "${tools[*]}" >&2; exit 1; }
fi

# --- PostgreSQL ---------------------------------------------------------------------------
# The PostgreSQL tests need a server: a throwaway cluster in a temporary directory, owned by
# the `postgres` user, on a free loopback port, fsync on (the default), stopped on exit.
# They fail (never skip) without one, so a missing server here is an error.
pg_fail() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

pg_bin_dir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            printf '%s\n' "$d"
        fi
    done | sort -V | tail -n 1
}

start_postgres() {
    local bin
    bin="$(pg_bin_dir)"
    if [[ -z "$bin" ]]; then
        step "installing PostgreSQL (apt-get install postgresql)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
            || pg_fail "PostgreSQL is not installed and apt-get install postgresql failed; the PostgreSQL tests cannot run"
        bin="$(pg_bin_dir)"
        [[ -n "$bin" ]] || pg_fail "apt-get installed postgresql but no initdb/pg_ctl was found under /usr/lib/postgresql/*/bin"
    fi
    id postgres >/dev/null 2>&1 || pg_fail "the postgres user does not exist (is the postgresql package installed?)"
    PG_DIR="$(mktemp -d /tmp/oris-pg.XXXXXX)"
    chown postgres "$PG_DIR"
    chmod 700 "$PG_DIR"
    # A free loopback port: one nothing answers on (another process may hold 5432).
    PG_PORT=""
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            PG_PORT="$p"
            break
        fi
    done
    [[ -n "$PG_PORT" ]] || pg_fail "no free loopback port found for PostgreSQL"
    PG_BIN="$bin"
    step "starting a throwaway PostgreSQL ($("$bin/pg_ctl" --version | awk '{print $3}')) on 127.0.0.1:$PG_PORT"
    runuser -u postgres -- "$bin/initdb" -D "$PG_DIR/data" --auth=trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; pg_fail "initdb failed"; }
    trap stop_postgres EXIT
    runuser -u postgres -- "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 30 \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; pg_fail "PostgreSQL did not start"; }
    runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres oris_test \
        || pg_fail "cannot create the test database"
    export ORIS_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/oris_test"
    # For the test that restarts the server.
    export ORIS_TEST_PG_DATA="$PG_DIR/data"
}

stop_postgres() {
    if [[ -n "${PG_DIR:-}" && -d "$PG_DIR/data" ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}

if [[ -n "${ORIS_TEST_PG_URL:-}" ]]; then
    step "using the PostgreSQL server at ORIS_TEST_PG_URL"
else
    start_postgres
fi
# ------------------------------------------------------------------------------------------

step "tests"
cargo nextest run --workspace --locked --no-fail-fast

if [[ -n "${ORIS_TEST_PG_DATA:-}" ]]; then
    # Restarts the server, breaking every connection: alone, after the rest.
    step "PostgreSQL restart test"
    cargo nextest run --workspace --locked --ignore-default-filter \
        -E 'test(=operations_succeed_after_the_server_restarts)'
fi

step "doc tests"
cargo test --workspace --doc --locked

step "all green"
