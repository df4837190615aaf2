# shellcheck shell=bash
# The outside tools hermod's tests depend on, one row each, and how to get
# them. Sourced by scripts/test.sh; nothing here runs on its own.
#
# Each row is: name | how to install | probe | version
#   - "how to install" is a Debian package name, or "fn:NAME" for a shell
#     function defined below (tools that are not plain apt installs);
#   - the probe is run exactly as the tests run the tool: the same path or
#     interpreter, the same flags, from the repository root (a bare
#     python3 probe for the dkim module, run there without -P, imports the
#     repository's own dkim/ directory, so every Python probe uses
#     /usr/bin/python3 -P, as the tests do);
#   - the version command prints one line for the log, so a CI run shows
#     exactly what it depended on.
# Add a row when a test starts using a new tool; the test must use the tool
# the way its probe does. Fields are split on "|", so a probe or version
# command must not contain a pipe (use <<< for input).
HERMOD_DEPS=(
	"swaks|swaks|command -v swaks|swaks --version 2>&1 | sed -n 1p"
	"smtp-sink|postfix|test -x /usr/sbin/smtp-sink|/usr/sbin/postconf -d mail_version 2>/dev/null"
	"dkimpy|python3-dkim|/usr/bin/python3 -P -c 'import dkim'|/usr/bin/python3 -P -c 'import importlib.metadata as m; print(\"dkimpy\", m.version(\"dkimpy\"))'"
	"named-checkzone|bind9-utils|command -v named-checkzone|named-checkzone -v"
	"postfix|postfix|test -x /usr/sbin/postfix -a -x /usr/lib/postfix/sbin/master|/usr/sbin/postconf -d mail_version 2>/dev/null"
	"exim|fn:install_exim|/opt/hermod/exim4/usr/sbin/exim4 -C /dev/stdin -bV <<< 'spool_directory = /tmp'|/opt/hermod/exim4/usr/sbin/exim4 -C /dev/stdin -bV <<< 'spool_directory = /tmp'"
	"opensmtpd|fn:install_opensmtpd|/opt/hermod/opensmtpd/usr/sbin/smtpd -n -f /dev/stdin <<< 'match for any reject' && getent passwd opensmtpd opensmtpq && command -v unshare nsenter|/opt/hermod/opensmtpd/usr/sbin/smtpd -h 2>&1; true"
	"sasl-plain|libsasl2-modules|compgen -G '/usr/lib/*/sasl2/libplain.so*'|dpkg-query -W -f='libsasl2-modules \${Version}\\n' libsasl2-modules"
	"staticcheck|fn:install_staticcheck|test -x \"\$(go env GOPATH)/bin/staticcheck\"|\"\$(go env GOPATH)/bin/staticcheck\" -version"
	"etcd|fn:install_etcd|/usr/bin/etcd --version|/usr/bin/etcd --version 2>/dev/null"
)

# STATICCHECK_VERSION is the pinned staticcheck release (2026.2.2).
STATICCHECK_VERSION=v0.8.2

install_staticcheck() {
	GOBIN="$(go env GOPATH)/bin" go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
}

# EXIM_ROOT is where install_exim unpacks Debian's Exim; bounce/realmta_test.go
# runs $EXIM_ROOT/usr/sbin/exim4 -C FILE from there as a private instance. The
# probe names a spool directory because exim creates its compiled-in one
# (/var/spool/exim4) otherwise.
EXIM_ROOT=/opt/hermod/exim4

# install_exim unpacks exim4-daemon-light, exim4-base and exim4-config with
# dpkg -x (exim4 conflicts with postfix in apt, so it is never installed as
# a package), installs the libraries the binary links against, and creates
# the Debian-exim system user the binary is built to run deliveries as.
install_exim() {
	local tmp f
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq libdb5.3 libgnutls-dane0 libgnutls30 libidn12 libidn2-0 libnsl2 libpcre2-8-0 libcrypt1 >/dev/null
	tmp=$(mktemp -d)
	chown _apt "$tmp" 2>/dev/null || true
	(cd "$tmp" && apt-get download -qq exim4-daemon-light exim4-base exim4-config) || { rm -rf "$tmp"; return 1; }
	mkdir -p "$EXIM_ROOT"
	for f in "$tmp"/*.deb; do dpkg -x "$f" "$EXIM_ROOT"; done
	rm -rf "$tmp"
	getent passwd Debian-exim >/dev/null ||
		useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin Debian-exim
}

# OPENSMTPD_ROOT is where install_opensmtpd unpacks Debian's OpenSMTPD.
# Its spool (/var/spool/smtpd), control socket (/run/smtpd.sock) and chroot
# (/var/lib/opensmtpd/empty) are compiled in, so bounce/realmta_test.go runs
# it in a private mount namespace (unshare -m) with temporary directories
# bound over /var/spool, /run and /var/lib: nothing of the host's is used.
OPENSMTPD_ROOT=/opt/hermod/opensmtpd

# install_opensmtpd unpacks opensmtpd with dpkg -x (it conflicts with postfix
# in apt), installs its libraries and creates its two privilege-separation
# users, as the package's postinst would.
install_opensmtpd() {
	local tmp u
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq libevent-2.1-7 libssl3 libdb5.3 libpam0g libcrypt1 zlib1g util-linux >/dev/null
	tmp=$(mktemp -d)
	chown _apt "$tmp" 2>/dev/null || true
	(cd "$tmp" && apt-get download -qq opensmtpd) || { rm -rf "$tmp"; return 1; }
	mkdir -p "$OPENSMTPD_ROOT"
	dpkg -x "$tmp"/opensmtpd_*.deb "$OPENSMTPD_ROOT"
	rm -rf "$tmp"
	for u in opensmtpd opensmtpq; do
		getent passwd "$u" >/dev/null ||
			useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$u"
	done
}

# install_etcd installs Debian's etcd-server (/usr/bin/etcd, which
# internal/etcdtest runs as private members on loopback) without letting the
# package start a system etcd: during the install a policy-rc.d that exits
# 101 forbids service starts (one already in place, as in Docker images, is
# kept as it is), and afterwards any etcd the install left running anyway is
# stopped by its PID.
install_etcd() {
	local ours=0 rc=0 pid
	export DEBIAN_FRONTEND=noninteractive
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		ours=1
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends etcd-server >/dev/null || rc=$?
	[ "$ours" = 1 ] && rm -f /usr/sbin/policy-rc.d
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		systemctl disable --now etcd.service >/dev/null 2>&1 || true
	fi
	for pid in $(pgrep -x etcd 2>/dev/null); do
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/etcd ] &&
			[ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = 1 ] && kill "$pid"
	done
	return "$rc"
}

# deps_field ROW N prints field N (1-based) of a row.
deps_field() { printf '%s\n' "$1" | cut -d'|' -f"$2"; }

# deps_ensure installs what is missing (as root), then checks every probe
# again and prints each tool's version. It fails when a probe still fails:
# a run must never pass on something it could not find the way the tests do.
deps_ensure() {
	local row name how probe apt=() fns=()
	for row in "${HERMOD_DEPS[@]}"; do
		name=$(deps_field "$row" 1)
		how=$(deps_field "$row" 2)
		probe=$(deps_field "$row" 3)
		if ! (eval "$probe") >/dev/null 2>&1; then
			case "$how" in
			fn:*) fns+=("${how#fn:}") ;;
			*) apt+=("$how") ;;
			esac
			echo "== $name: not found by its probe ($probe)"
		fi
	done
	if [ ${#apt[@]} -gt 0 ]; then
		if [ "$(id -u)" != 0 ]; then
			echo "missing Debian packages: ${apt[*]}; install them (apt-get install ${apt[*]}) or run as root" >&2
			return 1
		fi
		echo "== installing ${apt[*]}"
		export DEBIAN_FRONTEND=noninteractive
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		apt-get update -qq
		apt-get install -y -qq "${apt[@]}" >/dev/null
	fi
	local fn
	for fn in "${fns[@]}"; do
		echo "== installing with $fn"
		"$fn"
	done
	local failed=0 version
	for row in "${HERMOD_DEPS[@]}"; do
		name=$(deps_field "$row" 1)
		probe=$(deps_field "$row" 3)
		if ! (eval "$probe") >/dev/null 2>&1; then
			echo "not ok - $name: still not found by its probe after installing ($probe)" >&2
			failed=1
			continue
		fi
		version=$(eval "$(deps_field "$row" 4)" 2>/dev/null | sed -n 1p) || true # sed reads it all: no SIGPIPE for a tool that prints more
		echo "ok - $name: ${version:-version unknown}"
	done
	return "$failed"
}
