# shellcheck shell=bash
# The outside tools hermod's tests depend on, one row each, and how to get
# them. Sourced by scripts/test.sh; nothing here runs on its own.
#
# Each row is: name | how to install | probe | version
#   - "how to install" is a Debian package name, or "fn:NAME" for a shell
#     function defined below (tools that are not plain apt installs);
#   - the probe is run exactly as the tests run the tool: the same path or
#     interpreter, the same flags, from the repository root (a bare
#     `python3 -c 'import dkim'` there imports the repository's own dkim/
#     directory, so every Python probe uses /usr/bin/python3 -P, as the tests
#     do);
#   - the version command prints one line for the log, so a CI run shows
#     exactly what it depended on.
# Add a row when a test starts using a new tool; the test must use the tool
# the way its probe does.
HERMOD_DEPS=(
	"swaks|swaks|command -v swaks|swaks --version 2>&1 | head -n 1"
	"smtp-sink|postfix|test -x /usr/sbin/smtp-sink|/usr/sbin/postconf -d mail_version 2>/dev/null"
	"dkimpy|python3-dkim|/usr/bin/python3 -P -c 'import dkim'|/usr/bin/python3 -P -c 'import importlib.metadata as m; print(\"dkimpy\", m.version(\"dkimpy\"))'"
	"postfix|postfix|test -x /usr/sbin/postfix|/usr/sbin/postconf -d mail_version 2>/dev/null"
	"sasl-plain|libsasl2-modules|compgen -G '/usr/lib/*/sasl2/libplain.so*'|dpkg-query -W -f='libsasl2-modules \${Version}\\n' libsasl2-modules"
	"staticcheck|fn:install_staticcheck|test -x \"\$(go env GOPATH)/bin/staticcheck\"|\"\$(go env GOPATH)/bin/staticcheck\" -version"
)

# STATICCHECK_VERSION is the pinned staticcheck release (2026.2.2).
STATICCHECK_VERSION=v0.8.2

install_staticcheck() {
	GOBIN="$(go env GOPATH)/bin" go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
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
		version=$(eval "$(deps_field "$row" 4)" 2>/dev/null | head -n 1)
		echo "ok - $name: ${version:-version unknown}"
	done
	return "$failed"
}
