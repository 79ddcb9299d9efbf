#!/usr/bin/env bash
# Builds the Debian package, checks it with lintian, installs it with dpkg, checks what it
# installed (files, conffile, service user, unit file, `m365bot --version` and `migrate` as the
# service user), then purges it again and checks that it is gone.
#
# Needs root (dpkg) on a Debian-based machine. Installs `cargo-deb` (cargo install) and
# `lintian` (apt-get) when they are missing. Any step that cannot run stops the script with a
# non-zero status and says why; nothing is skipped silently.
#
# Usage: scripts/package-test.sh [--keep]
#   --keep   leave the package installed at the end (default: purge it)
# Environment:
#   CARGO_TARGET_DIR   where cargo builds (cargo deb uses it too)
#   PACKAGE_OUT_DIR    where the .deb is written (default: a temporary directory)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

keep=0
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h | --help)
            sed -n "2,/^set -euo/p" "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "scripts/package-test.sh: unknown argument '$arg' (see --help)" >&2
            exit 2
            ;;
    esac
done

step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok   %s\n' "$*"; }
fail() {
    printf 'FAIL %s\n' "$*" >&2
    exit 1
}

installed_here=0
cleanup() {
    if [ "$installed_here" = 1 ] && [ "$keep" = 0 ]; then
        dpkg --purge m365bot >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "prerequisites"
[ "$(id -u)" = 0 ] || fail "must run as root: dpkg -i and the service user need it (try: sudo $0)"
command -v dpkg >/dev/null || fail "dpkg not found: this script tests the Debian package on a Debian-based system"
if dpkg-query -W -f='${Status}' m365bot 2>/dev/null | grep -q "installed"; then
    fail "m365bot is already installed on this machine; this test installs and purges it, so run it where m365bot is not in use (or: dpkg --purge m365bot)"
fi
if ! command -v cargo-deb >/dev/null; then
    echo "cargo-deb missing: cargo install --locked cargo-deb"
    # Its own build directory, so the project's target directory is not touched.
    CARGO_TARGET_DIR="$(mktemp -d)" cargo install --locked cargo-deb ||
        fail "cannot install cargo-deb (cargo install --locked cargo-deb)"
fi
ok "cargo-deb $(cargo deb --version 2>/dev/null | head -n1)"
apt_packages=()
command -v lintian >/dev/null || apt_packages+=(lintian)
command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
command -v runuser >/dev/null || apt_packages+=(util-linux)
command -v adduser >/dev/null || apt_packages+=(adduser)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "installing ${apt_packages[*]} with apt-get"
    apt-get update -qq || fail "apt-get update failed: cannot install ${apt_packages[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" ||
        fail "apt-get install ${apt_packages[*]} failed"
fi
ok "lintian $(lintian --version | awk '{print $2}'), $(systemd-analyze --version | head -n1)"

step "build (cargo deb: release build)"
out_dir=${PACKAGE_OUT_DIR:-$(mktemp -d)}
mkdir -p "$out_dir"
cargo deb --locked --output "$out_dir/" || fail "cargo deb failed"
deb=$(ls -t "$out_dir"/m365bot_*.deb 2>/dev/null | head -n1 || true)
[ -n "$deb" ] || fail "cargo deb wrote no m365bot_*.deb into $out_dir"
ok "built $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
dpkg-deb --contents "$deb"

step "lintian"
lintian --fail-on error,warning --info "$deb" || fail "lintian reports errors or warnings (overrides, each with its reason: debian/lintian-overrides)"
ok "lintian: no errors or warnings"

step "install (dpkg -i)"
dpkg -i "$deb" || fail "dpkg -i $deb failed"
installed_here=1
ok "installed $(dpkg-query -W -f='${Package} ${Version}' m365bot)"

step "installed files"
expect_file() { # path mode owner:group
    [ -e "$1" ] || fail "$1 is missing"
    local actual
    actual=$(stat -c '%a %U:%G' "$1")
    [ "$actual" = "$2 $3" ] || fail "$1 is $actual, expected $2 $3"
    ok "$1 $actual"
}
expect_file /usr/bin/m365bot 755 root:root
expect_file /usr/lib/systemd/system/m365bot.service 644 root:root
expect_file /etc/m365bot 750 root:m365bot
expect_file /etc/m365bot/m365bot.toml 600 m365bot:m365bot
expect_file /var/lib/m365bot 750 m365bot:m365bot
expect_file /usr/share/doc/m365bot/deploy.md 644 root:root
dpkg-query -W -f='${Conffiles}\n' m365bot | grep -q ' /etc/m365bot/m365bot.toml ' ||
    fail "/etc/m365bot/m365bot.toml is not registered as a conffile"
ok "/etc/m365bot/m365bot.toml is a conffile"

step "service user"
entry=$(getent passwd m365bot) || fail "no user m365bot after installation"
uid=$(echo "$entry" | cut -d: -f3)
shell=$(echo "$entry" | cut -d: -f7)
home=$(echo "$entry" | cut -d: -f6)
[ "$uid" -lt 1000 ] || fail "m365bot has uid $uid: not a system user"
case "$shell" in */nologin | */false) ;; *) fail "m365bot has login shell $shell" ;; esac
[ "$home" = /var/lib/m365bot ] || fail "m365bot's home is $home, expected /var/lib/m365bot"
ok "m365bot: system user (uid $uid), shell $shell, home $home"

step "unit file"
unit=/usr/lib/systemd/system/m365bot.service
for directive in "User=m365bot" "ProtectSystem=strict" "NoNewPrivileges=yes" "StateDirectory=m365bot" \
    "EnvironmentFile=-/etc/m365bot/env" "ExecStartPre=/usr/bin/m365bot migrate" "ExecStart=/usr/bin/m365bot serve"; do
    grep -qx "$directive" "$unit" || fail "$unit lacks $directive"
done
ok "hardening and start directives present"
verify_output=$(systemd-analyze verify "$unit" 2>&1) || {
    echo "$verify_output"
    fail "systemd-analyze verify $unit failed"
}
[ -z "$verify_output" ] || {
    echo "$verify_output"
    fail "systemd-analyze verify $unit printed warnings"
}
ok "systemd-analyze verify: clean"
exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null | tail -n1) ||
    fail "systemd-analyze security --offline=yes $unit failed"
ok "systemd-analyze security: ${exposure#→ }"
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    state=$(systemctl is-enabled m365bot 2>&1 || true)
    [ "$state" = disabled ] || fail "m365bot.service is '$state' after installation, expected disabled until configured"
    ok "m365bot.service is disabled until configured"
else
    echo "note: systemd is not running here (container): enabling and starting the unit is not exercised"
fi

step "the binary as the service user"
version=$(runuser -u m365bot -- /usr/bin/m365bot --version) || fail "m365bot --version failed as m365bot"
echo "$version" | grep -Eq '^m365bot [0-9]+\.[0-9]+\.[0-9]+ \(([0-9a-f]{12}|unknown)\)$' ||
    fail "unexpected version line: $version"
expected=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
echo "$version" | grep -q "($expected)" || fail "version line $version does not name revision $expected"
ok "$version"
# The environment the unit gives it, with a placeholder identity: migrate creates the SQLite
# database in the state directory, which only the service user may write.
(cd /var/lib/m365bot && runuser -u m365bot -- env -i PATH=/usr/bin:/bin \
    M365BOT_CONFIG=/etc/m365bot/m365bot.toml \
    M365BOT_DATABASE__URL=sqlite:///var/lib/m365bot/m365bot.db \
    MicrosoftAppId=11111111-2222-3333-4444-555555555555 MicrosoftAppPassword=placeholder \
    MicrosoftAppTenantId=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee \
    /usr/bin/m365bot migrate) || fail "m365bot migrate as m365bot failed"
expect_file /var/lib/m365bot/m365bot.db 600 m365bot:m365bot

if [ "$keep" = 1 ]; then
    step "kept installed (--keep)"
    exit 0
fi

step "remove (dpkg --purge)"
dpkg --purge m365bot || fail "dpkg --purge m365bot failed"
installed_here=0
for gone in /usr/bin/m365bot /usr/lib/systemd/system/m365bot.service /etc/m365bot /var/lib/m365bot; do
    [ ! -e "$gone" ] || fail "$gone is still there after purge"
done
ok "binary, unit, /etc/m365bot and /var/lib/m365bot removed (the system user m365bot is kept)"

printf '\npackage test passed: %s\n' "$deb"
