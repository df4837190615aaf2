#!/usr/bin/env bash
# End-to-end test of hermod against real, independent peers:
#   - swaks and python smtplib submit mail (SMTP AUTH),
#   - Postfix's smtp-sink is the remote MX and dumps every message to a file,
#   - scripts/testdns is a loopback DNS server answering from a zone file,
#   - dkimpy (python3-dkim) verifies the DKIM signatures independently.
# Prints one "ok - ..." / "not ok - ..." line per check and a final line
# "N passed, M failed"; exits non-zero if any check failed.
#
# Needs: go, swaks, /usr/sbin/smtp-sink (postfix), python3 with dkim (python3-dkim).
# Run as root (smtp-sink -u nobody). Everything listens on 127.0.0.1 only.
# KEEP=1 keeps the temporary directory; it is always kept when a check fails.
#
# Many checks are "check NAME eval '...'": the single quotes are deliberate.
# shellcheck disable=SC2016,SC2015
set -euo pipefail

cd "$(dirname "$0")/.."
TMP=$(mktemp -d /tmp/hermod-e2e.XXXXXX)
chmod 755 "$TMP"
SINKDIR=$TMP/sink
mkdir -p "$SINKDIR" && chmod 777 "$SINKDIR"
RUN=$$-$RANDOM # tags the bodies of this run's messages

PASS=0
FAIL=0
HERMOD_PID=
SINK_PID=
DNS_PID=
TAIL_PID=
GREY_PID=

ok() { echo "ok - $*"; PASS=$((PASS + 1)); }
notok() {
	echo "not ok - $*"
	FAIL=$((FAIL + 1))
	if [ -n "${DIAG:-}" ]; then
		printf '%s\n' "$DIAG" | sed 's/^/#   /'
	fi
}
# check NAME CMD...: runs CMD; ok if it succeeds. CMD may set DIAG to
# explain a failure.
check() {
	local name=$1
	shift
	DIAG=
	if "$@"; then ok "$name"; else notok "$name"; fi
	DIAG=
}
diag() { DIAG="${DIAG:+$DIAG
}$*"; return 1; }
# fatal: a step the rest depends on failed; count it and stop.
fatal() {
	notok "$*"
	exit 1
}

stop_pid() { # stop_pid PID: TERM, then KILL after 5 s; reaps it
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	set +e
	stop_pid "$TAIL_PID"
	stop_pid "$GREY_PID"
	stop_pid "$HERMOD_PID"
	stop_pid "$SINK_PID"
	stop_pid "$DNS_PID"
	if [ "$FAIL" -gt 0 ] || [ "$rc" -ne 0 ]; then
		if [ -f "$TMP/hermod.log" ]; then
			echo "# hermod log (tail):"
			tail -n 30 "$TMP/hermod.log" | cut -c 1-300 | sed 's/^/#   /'
		fi
		echo "# kept $TMP for inspection"
	elif [ -n "${KEEP:-}" ]; then
		echo "# kept $TMP"
	else
		rm -rf "$TMP"
	fi
	echo "$PASS passed, $FAIL failed"
	if [ "$rc" -eq 0 ] && [ "$FAIL" -gt 0 ]; then rc=1; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_until SECONDS CMD...: polls CMD every 0.2 s until it succeeds, for at
# most SECONDS (then one last try).
wait_until() {
	local end=$((SECONDS + $1))
	shift
	while [ "$SECONDS" -lt "$end" ]; do
		if "$@"; then return 0; fi
		sleep 0.2
	done
	"$@"
}

# ---------------------------------------------------------------------------
# tools

for t in go swaks /usr/sbin/smtp-sink; do
	command -v "$t" >/dev/null || fatal "required tool $t is missing"
done
# Debian's python3 with dkimpy, exactly as scripts/deps.sh probes it (-P: the
# repository's own dkim/ directory must not shadow the module; cwd is the
# repository root).
PY=/usr/bin/python3
"$PY" -P -c 'import dkim' 2>/dev/null || fatal "no dkim module for /usr/bin/python3 -P (apt-get install python3-dkim)"

# Five distinct free ports (TCP, and UDP too for the DNS server).
read -r SINKPORT SUBPORT BOUNCEPORT APIPORT DNSPORT < <("$PY" -P -c '
import socket
held, ports = [], []
while len(ports) < 5:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        continue
    held += [t, u]; ports.append(p)
print(*ports)') || fatal "find free ports"
[ -n "$DNSPORT" ] || fatal "find free ports"

# The message helper: strips smtp-sink's added lines, reads headers, checks DKIM.
cat >"$TMP/msg.py" <<'EOF'
import sys, re, email, email.header, email.utils, dkim

SINK = re.compile(rb'^X-(Client-Addr|Client-Name|Client-Proto|Helo-Args|Mail-Args|Rcpt-Args):')

def raw(path):
    """The message as delivered: smtp-sink's leading X-* lines removed, CRLF."""
    lines = open(path, 'rb').read().replace(b'\r\n', b'\n').split(b'\n')
    i = 0
    while i < len(lines) and SINK.match(lines[i]):
        i += 1
    return b'\r\n'.join(lines[i:])

def headers(path):
    head = raw(path).split(b'\r\n\r\n', 1)[0]
    return email.message_from_bytes(head + b'\r\n\r\n')

def unfold(v):
    return re.sub(r'\r?\n[ \t]', ' ', str(v))

def decode(v):
    return str(email.header.make_header(email.header.decode_header(unfold(v))))

cmd, path = sys.argv[1], sys.argv[2]
if cmd == 'raw':
    sys.stdout.buffer.write(raw(path))
elif cmd == 'hdr':      # hdr FILE NAME: every value of NAME, unfolded, raw
    for v in headers(path).get_all(sys.argv[3]) or []:
        print(unfold(v))
elif cmd == 'dechdr':   # dechdr FILE NAME: every value, RFC 2047-decoded
    for v in headers(path).get_all(sys.argv[3]) or []:
        print(decode(v))
elif cmd == 'from':     # from FILE: "address<TAB>display name" of each From
    for v in headers(path).get_all('From') or []:
        name, addr = email.utils.parseaddr(unfold(v))
        print(addr + '\t' + decode(name))
elif cmd == 'dkim':     # dkim FILE DOMAIN NAME TXT: verify the d=DOMAIN signature
    domain, name, txt = sys.argv[3], sys.argv[4], sys.argv[5]
    data = raw(path)
    sigs = headers(path).get_all('DKIM-Signature') or []
    ds = [m.group(1) for s in sigs for m in [re.search(r'(?:^|;)\s*d\s*=\s*([^;\s]+)', unfold(s))] if m]
    print('signatures: d=' + ','.join(ds))
    if domain not in ds:
        print('no signature with d=' + domain)
        sys.exit(1)
    def dnsfunc(qname, timeout=5):
        q = qname.decode() if isinstance(qname, bytes) else qname
        print('dns lookup ' + q)
        if q.lower().rstrip('.') == name.lower().rstrip('.'):
            return txt.encode()
        return None
    ok = dkim.verify(data, dnsfunc=dnsfunc)
    print('dkim.verify: ' + str(ok))
    sys.exit(0 if ok else 1)
else:
    sys.exit('unknown command ' + cmd)
EOF
msg() { "$PY" -P "$TMP/msg.py" "$@"; }

# ---------------------------------------------------------------------------
# 1. build

H=$TMP/hermod
go build -o "$H" ./cmd/hermod >"$TMP/build.log" 2>&1 || { sed 's/^/# /' "$TMP/build.log"; fatal "build hermod"; }
go build -o "$TMP/testdns" ./scripts/testdns >"$TMP/build.log" 2>&1 || { sed 's/^/# /' "$TMP/build.log"; fatal "build scripts/testdns"; }
ok "hermod and testdns build"

# ---------------------------------------------------------------------------
# 2. the remote MX

start_sink() {
	/usr/sbin/smtp-sink -u nobody -c -d "$SINKDIR/%M%S." "127.0.0.1:$SINKPORT" 100 >>"$TMP/sink.log" 2>&1 &
	SINK_PID=$!
	wait_until 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SINKPORT" 2>/dev/null
}
start_sink || fatal "smtp-sink listens on 127.0.0.1:$SINKPORT"

# ---------------------------------------------------------------------------
# 3. DNS

ZONE=$TMP/zone.txt
: >"$ZONE"
"$TMP/testdns" -listen "127.0.0.1:$DNSPORT" -zone "$ZONE" >"$TMP/dns.log" 2>&1 &
DNS_PID=$!
wait_until 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$DNSPORT" 2>/dev/null || fatal "testdns listens on 127.0.0.1:$DNSPORT"

# ---------------------------------------------------------------------------
# 4. hermod

HASH=$(printf 'secret-pass\n' | "$H" passwd -cost 4) || fatal "hermod passwd"
CONF=$TMP/hermod.toml
cat >"$CONF" <<EOF
hostname = "hermod.test"
data_dir = "$TMP/data"
shutdown_timeout = "10s"

[submission]
listen = "127.0.0.1:$SUBPORT"

[[submission.users]]
name = "app"
password_hash = "$HASH"
accounts = ["*"]

[bounce]
listen = "127.0.0.1:$BOUNCEPORT"
domain = "m.makeleaps.test"

[sender]
default_from = "bounce@makeleaps.test"
dkim_domain = "makeleaps.test"

[relay]
resolvers = ["127.0.0.1:$DNSPORT"]
retry = ["1s"]
connect_timeout = "5s"
delay_warning = "3s"

[[relay.route]]
domain = "*"
host = "127.0.0.1:$SINKPORT"

[api]
listen = "127.0.0.1:$APIPORT"

[log]
level = "debug"
EOF

# start_hermod: starts the daemon and waits (up to 30 s) until its API answers.
start_hermod() {
	local i
	"$H" serve -config "$CONF" >>"$TMP/hermod.log" 2>&1 &
	HERMOD_PID=$!
	for ((i = 0; i < 150; i++)); do
		kill -0 "$HERMOD_PID" 2>/dev/null || return 1 # exited
		if "$H" queue ls -config "$CONF" >/dev/null 2>&1; then return 0; fi
		sleep 0.2
	done
	return 1
}
start_hermod || fatal "hermod serve starts and answers queue ls"
ok "hermod serve starts and answers queue ls"

hq() { "$H" "$@" -config "$CONF"; }
# api PATH: GET on the HTTP API with the daemon's token; prints the body.
api() {
	"$PY" -P -c '
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip()})
sys.stdout.write(urllib.request.urlopen(req, timeout=10).read().decode())' "http://127.0.0.1:$APIPORT$1" "$TMP/data/api.token"
}

# ---------------------------------------------------------------------------
# helpers for the checks

# sub FILE SWAKS-ARGS...: swaks to the submission port as app; transcript in FILE.
sub() {
	local out=$1
	shift
	swaks --server "127.0.0.1:$SUBPORT" --timeout 15 --auth PLAIN --auth-user app --auth-password secret-pass "$@" >"$out" 2>&1
}
# queued_id FILE: the id of "250 2.0.0 OK: queued as <id>" in a transcript.
queued_id() {
	sed -nE 's/^<-+ +250 2\.0\.0 OK: queued as ([0-9a-z]{16})\r?$/\1/p' "$1" | tail -n 1
}
# sink_file TEXT: the sink file containing TEXT (first one).
sink_file() { grep -rlF -- "$1" "$SINKDIR" 2>/dev/null | head -n 1; }
sink_count() { grep -rlF -- "$1" "$SINKDIR" 2>/dev/null | wc -l; }
has_sink_file() { [ -n "$(sink_file "$1")" ]; }
# envelope sender and recipient that smtp-sink recorded
mail_from_of() { sed -nE 's/^X-Mail-Args: <([^>]*)>.*/\1/p' "$1" | head -n 1; }
rcpt_of() { sed -nE 's/^X-Rcpt-Args: <([^>]*)>.*/\1/p' "$1" | head -n 1; }
# status_of ID ADDR: the status of one recipient, from `hermod status`.
status_of() {
	hq status "$1" 2>/dev/null | sed -nE "s/^recipient [0-9]+ <$2>: ([a-z]+).*/\1/p" | head -n 1
}
status_is() { [ "$(status_of "$1" "$2")" = "$3" ]; }

PLATFORM_TXT=
dkim_show() {
	local out
	out=$(hq dkim show 2>&1) || diag "$out" || return 1
	# Zone text: the 410-octet RSA record as quoted strings of at most 255
	# octets ("v=DKIM1; k=rsa; p=..." "..."), joined here for dkimpy.
	PLATFORM_TXT=$(sed -nE 's/^hermod\._domainkey\.makeleaps\.test\.[[:space:]]+TXT[[:space:]]+("[^"]{1,255}"( "[^"]{1,255}")*)$/\1/p' <<<"$out" | sed -E 's/" "//g; s/^"//; s/"$//')
	[[ "$PLATFORM_TXT" =~ ^v=DKIM1\;\ k=rsa\;\ p=[A-Za-z0-9+/=]+$ ]] || diag "$out"
}
check "hermod dkim show prints hermod._domainkey.makeleaps.test. TXT \"v=DKIM1; k=rsa; p=...\" \"...\"" dkim_show

# ---------------------------------------------------------------------------
# a. config check

check "hermod config check accepts the test configuration" \
	eval 'out=$(hq config check 2>&1) || diag "$out"'
cfg_typo() {
	local out rc=0
	{ echo 'hostnme = "x"'; cat "$CONF"; } >"$TMP/typo.toml"
	out=$("$H" config check -config "$TMP/typo.toml" 2>&1) || rc=$?
	[ "$rc" -eq 2 ] || diag "exit status $rc, want 2: $out" || return 1
	grep -q hostnme <<<"$out" || diag "the error does not name the key: $out"
}
check "hermod config check rejects a typo key (hostnme) with exit 2, naming it" cfg_typo

# ---------------------------------------------------------------------------
# b. queue tail -f

"$H" queue tail -f -n 1000 -config "$CONF" >"$TMP/tail.log" 2>&1 &
TAIL_PID=$!

# ---------------------------------------------------------------------------
# c. submission with swaks

ID1=
submit1() {
	sub "$TMP/s1.txt" --from member@customer.test --to rcpt1@dest.test \
		--header 'From: "Taro Seikyu" <taro@customer.test>' --header 'X-Hermod-Ref: inv-42' \
		--body "hello from e2e $RUN" || diag "swaks failed: $(tail -n 5 "$TMP/s1.txt")" || return 1
	ID1=$(queued_id "$TMP/s1.txt")
	[ -n "$ID1" ] || diag "no '250 2.0.0 OK: queued as <16 chars>' in: $(grep -- '<-' "$TMP/s1.txt" | tail -n 3)"
}
check "swaks submission as app is accepted with 250 2.0.0 OK: queued as <id>" submit1

# ---------------------------------------------------------------------------
# d. delivery to smtp-sink

F1=
VERP1=
deliver1() {
	wait_until 30 has_sink_file "hello from e2e $RUN" || diag "nothing arrived in $SINKDIR" || return 1
	sleep 0.3 # the file may still be being written
	F1=$(sink_file "hello from e2e $RUN")
	VERP1=$(mail_from_of "$F1")
}
check "message submitted with swaks arrives in smtp-sink" deliver1

if [ -n "$F1" ]; then
	check "envelope sender is bounce-md_<verp>@m.makeleaps.test" \
		eval '[[ "$VERP1" =~ ^bounce-md_[0-9a-v]+@m\.makeleaps\.test$ ]] || diag "X-Mail-Args: $(grep ^X-Mail-Args "$F1")"'
	from_platform() {
		local f=$1 want_name=$2 froms
		froms=$(msg from "$f")
		[ "$(printf '%s\n' "$froms" | wc -l)" -eq 1 ] || diag "From headers: $froms" || return 1
		[ "${froms%%$'\t'*}" = bounce@makeleaps.test ] || diag "From: $(msg hdr "$f" From)" || return 1
		[[ "${froms#*$'\t'}" == *"$want_name"* ]] || diag "From display name '${froms#*$'\t'}' lacks '$want_name' (From: $(msg hdr "$f" From))"
	}
	check "header From is the platform sender \"Taro Seikyu (via MakeLeaps)\" <bounce@makeleaps.test>" from_platform "$F1" "Taro Seikyu (via MakeLeaps)"
	check "Reply-To is the submitted From taro@customer.test" \
		eval 'msg hdr "$F1" Reply-To | grep -qF taro@customer.test || diag "Reply-To: $(msg hdr "$F1" Reply-To)"'
	check "X-Hermod-Ref is stripped before sending" \
		eval '[ -z "$(msg hdr "$F1" X-Hermod-Ref)" ] || diag "X-Hermod-Ref: $(msg hdr "$F1" X-Hermod-Ref)"'
	check "delivered message has a Message-ID" \
		eval '[ -n "$(msg hdr "$F1" Message-ID)" ]'
	check "delivered message has no X-Hermod-* header" \
		eval '! msg raw "$F1" | sed "/^\r\?$/q" | grep -qi "^X-Hermod-" || diag "$(msg raw "$F1" | sed "/^\r\?$/q" | grep -i "^X-Hermod-")"'

	# e. DKIM with dkimpy
	dkim_ok() { # dkim_ok FILE DOMAIN NAME TXT
		local out
		[ -n "$4" ] || diag "no TXT record to verify with" || return 1
		out=$(msg dkim "$@" 2>&1) || diag "$out"
	}
	check "DKIM d=makeleaps.test verifies with dkimpy (key from hermod dkim show)" \
		dkim_ok "$F1" makeleaps.test hermod._domainkey.makeleaps.test. "$PLATFORM_TXT"
fi

# ---------------------------------------------------------------------------
# f. queue tail and status

tail_queued_sent() { # tail_queued_sent ID ADDR
	local q s
	q=$(grep -nF "$1: to=<$2>, status=queued" "$TMP/tail.log" | head -n 1 | cut -d: -f1)
	s=$(grep -nF "$1: to=<$2>, status=sent" "$TMP/tail.log" | head -n 1 | cut -d: -f1)
	[ -n "$q" ] && [ -n "$s" ] && [ "$q" -lt "$s" ]
}
check "hermod queue tail -f shows the message going status=queued then status=sent" \
	eval '[ -n "$ID1" ] && { wait_until 10 tail_queued_sent "$ID1" rcpt1@dest.test || diag "$(grep -F "${ID1:-none}" "$TMP/tail.log")"; }'
status_sent() {
	local out
	[ -n "$ID1" ] || return 1
	out=$(hq status "$ID1" 2>&1) || diag "$out" || return 1
	grep -qE "^recipient [0-9]+ <rcpt1@dest.test>: sent" <<<"$out" && grep -qF 送信済み <<<"$out" || diag "$out"
}
check "hermod status shows sent with the wording 送信済み" status_sent

# ---------------------------------------------------------------------------
# g. submission refusals

noauth() {
	if swaks --server "127.0.0.1:$SUBPORT" --timeout 15 --from member@customer.test --to rcpt1@dest.test \
		--body "must not be accepted $RUN" >"$TMP/g1.txt" 2>&1; then
		diag "swaks succeeded: $(grep -E '^<' "$TMP/g1.txt" | tail -n 2)"
		return 1
	fi
	grep -qE '^<\*\* +530 5\.7\.0' "$TMP/g1.txt" || diag "$(grep -E '^(<|\*\*\*)' "$TMP/g1.txt" | tail -n 4)"
}
check "MAIL without AUTH gets 530 5.7.0" noauth
badpass() {
	if swaks --server "127.0.0.1:$SUBPORT" --timeout 15 --auth PLAIN --auth-user app --auth-password wrong-pass \
		--from member@customer.test --to rcpt1@dest.test --body "must not be accepted $RUN" >"$TMP/g2.txt" 2>&1; then
		diag "swaks succeeded: $(grep -E '^<' "$TMP/g2.txt" | tail -n 2)"
		return 1
	fi
	grep -qE '^<\*\* +535' "$TMP/g2.txt" || diag "$(grep -E '^(<|\*\*\*)' "$TMP/g2.txt" | tail -n 4)"
}
check "AUTH with a wrong password gets 535" badpass
nofrom() {
	printf 'To: rcpt1@dest.test\r\nSubject: no from %s\r\nMessage-ID: <nofrom-%s@customer.test>\r\n\r\nno from header\r\n' "$RUN" "$RUN" >"$TMP/nofrom.eml"
	if sub "$TMP/g3.txt" --from member@customer.test --to rcpt1@dest.test --data @"$TMP/nofrom.eml"; then
		diag "swaks succeeded: $(grep -E '^<' "$TMP/g3.txt" | tail -n 2)"
		return 1
	fi
	grep -qE '^<\*\* +550 5\.6\.0' "$TMP/g3.txt" || diag "$(grep -E '^(<|\*\*\*)' "$TMP/g3.txt" | tail -n 4)"
}
check "a message without From header gets 550 5.6.0" nofrom

# ---------------------------------------------------------------------------
# h. custom domain: account, records, DNS, verification, owner mails

check "hermod account set acme --owner owner@acme-owner.test --custom-domain=true" \
	eval 'out=$(hq account set acme --owner owner@acme-owner.test --custom-domain=true 2>&1) || diag "$out"'

DKIM_NAME=
DKIM_TXT=
DKIM_VALUE=
CNAME_NAME=
CNAME_VALUE=
DOMAIN_ADD_OUT=
domain_add() {
	DOMAIN_ADD_OUT=$(hq domain add acme example.test 2>&1) || diag "$DOMAIN_ADD_OUT"
}
check "hermod domain add acme example.test succeeds" domain_add
domain_api() {
	local js
	js=$(api /v1/accounts/acme/domains/example.test) || diag "API request failed" || return 1
	echo "$js" >"$TMP/domain.json"
	eval "$("$PY" -P -c '
import json, sys, shlex
d = json.load(open(sys.argv[1]))
for r in d.get("records") or []:
    if r["type"] == "TXT":
        print("DKIM_NAME=" + shlex.quote(r["name"]) + "; DKIM_VALUE=" + shlex.quote(r["value"]) + "; DKIM_TXT=" + shlex.quote(d["public_txt"]))
    if r["type"] == "CNAME":
        print("CNAME_NAME=" + shlex.quote(r["name"]) + "; CNAME_VALUE=" + shlex.quote(r["value"]))
' "$TMP/domain.json" 2>&1)" || diag "bad JSON: $js" || return 1
	[[ "$DKIM_NAME" =~ ^[a-z0-9-]+\._domainkey\.example\.test\.?$ ]] && [[ "$DKIM_TXT" =~ ^v=DKIM1\;\ k=rsa\;\ p=[A-Za-z0-9+/=]+$ ]] &&
		[[ "$CNAME_NAME" =~ ^hermod-bounce\.example\.test\.?$ ]] && [[ "$CNAME_VALUE" =~ ^m\.makeleaps\.test\.?$ ]] ||
		diag "records: $js"
}
check "API GET /v1/accounts/acme/domains/example.test returns TXT <selector>._domainkey.example.test and CNAME hermod-bounce.example.test -> m.makeleaps.test" domain_api
# The records domain add printed are those of the API (whatever the layout).
domain_add_records() {
	local v
	[ -n "$DOMAIN_ADD_OUT" ] && [ -n "$DKIM_NAME" ] || diag "nothing to compare" || return 1
	for v in "${DKIM_NAME%.}" TXT "$DKIM_VALUE" "${CNAME_NAME%.}" CNAME "${CNAME_VALUE%.}"; do
		grep -qF -- "$v" <<<"$DOMAIN_ADD_OUT" || diag "'$v' missing from: $DOMAIN_ADD_OUT" || return 1
	done
}
check "hermod domain add prints both records (TXT name and value, CNAME name and target)" domain_add_records

domain_status() { hq domain show acme example.test 2>/dev/null | sed -nE 's/^domain .*: ([a-z]+)$/\1/p' | head -n 1; }
check_status() { # check_status WANT: runs domain check, compares the status line
	local out st
	out=$(hq domain check acme example.test 2>&1) || diag "$out" || return 1
	st=$(sed -nE 's/^domain .*: ([a-z]+)$/\1/p' <<<"$out" | head -n 1)
	[ "$st" = "$1" ] || diag "status '$st', want '$1': $out"
}
if [ -n "$CNAME_NAME" ]; then
	echo "${CNAME_NAME%.}. CNAME ${CNAME_VALUE%.}." >>"$ZONE"
fi
check "with only the CNAME published, hermod domain check says verifying" check_status verifying
if [ -n "$DKIM_NAME" ]; then
	echo "${DKIM_NAME%.}. TXT $DKIM_VALUE" >>"$ZONE"
fi
check "the DKIM TXT is long enough to be split in 2 DNS strings" eval '[ "${#DKIM_TXT}" -gt 255 ] || diag "${#DKIM_TXT} bytes"'
check "with the TXT published too, hermod domain check says verified" check_status verified

owner_mail() { # owner_mail SUBJECT-PART: a sink file to owner@acme-owner.test with that subject
	local f
	# shellcheck disable=SC2013 # the sink's file names have no blanks
	for f in $(grep -rlF '<owner@acme-owner.test>' "$SINKDIR" 2>/dev/null); do
		[ "$(rcpt_of "$f")" = owner@acme-owner.test ] || continue
		if msg dechdr "$f" Subject | grep -qF "$1"; then return 0; fi
	done
	return 1
}
owner_queue() { # the queue holds two messages to the owner
	local n
	n=$(api "/v1/queue?limit=500" | "$PY" -P -c '
import json, sys
d = json.load(sys.stdin)
print(sum(1 for m in d.get("messages") or [] for r in m.get("recipients") or [] if r["address"] == "owner@acme-owner.test"))')
	[ "$n" -ge 2 ] || diag "$n message(s) to owner@acme-owner.test in the queue"
}
check "the queue holds the two owner mails to owner@acme-owner.test" eval 'wait_until 10 owner_queue'
check "owner mail 'Domain verification started' arrives in smtp-sink" \
	eval 'wait_until 20 owner_mail "Domain verification started" || diag "subjects to owner: $(for f in $(grep -rlF owner@acme-owner.test "$SINKDIR"); do msg dechdr "$f" Subject; done)"'
check "owner mail 'Domain verification complete' arrives in smtp-sink" \
	eval 'wait_until 10 owner_mail "Domain verification complete" || diag "subjects to owner: $(for f in $(grep -rlF owner@acme-owner.test "$SINKDIR"); do msg dechdr "$f" Subject; done)"'

# ---------------------------------------------------------------------------
# i. sending from the verified domain, and from an unverified one

ID2=
F2=
VERP2=
submit2() {
	sub "$TMP/s2.txt" --from member@example.test --to rcpt2@dest.test \
		--header 'From: Taro <taro@example.test>' --header 'X-Hermod-Account: acme' \
		--body "custom domain mail $RUN" || diag "swaks failed: $(tail -n 5 "$TMP/s2.txt")" || return 1
	ID2=$(queued_id "$TMP/s2.txt")
	[ -n "$ID2" ] || diag "no queued id" || return 1
	wait_until 20 has_sink_file "custom domain mail $RUN" || diag "nothing arrived in the sink" || return 1
	sleep 0.3
	F2=$(sink_file "custom domain mail $RUN")
	VERP2=$(mail_from_of "$F2")
}
check "mail for acme From taro@example.test is accepted and delivered" submit2
if [ -n "$F2" ]; then
	check "verified domain: header From stays Taro <taro@example.test>" \
		eval '[ "$(msg from "$F2")" = "taro@example.test	Taro" ] || diag "From: $(msg hdr "$F2" From)"'
	check "verified domain: envelope sender is bounce-md_<verp>@hermod-bounce.example.test" \
		eval '[[ "$VERP2" =~ ^bounce-md_[0-9a-v]+@hermod-bounce\.example\.test$ ]] || diag "X-Mail-Args: $(grep ^X-Mail-Args "$F2")"'
	check "verified domain: DKIM d=example.test verifies with dkimpy (key from the API)" \
		dkim_ok "$F2" example.test "$DKIM_NAME" "$DKIM_TXT"
fi

F3=
submit3() {
	local id
	sub "$TMP/s3.txt" --from member@example.jp --to rcpt3@dest.test \
		--header 'From: Jiro <jiro@example.jp>' --header 'X-Hermod-Account: acme' \
		--body "unverified domain mail $RUN" || diag "swaks failed: $(tail -n 5 "$TMP/s3.txt")" || return 1
	id=$(queued_id "$TMP/s3.txt")
	[ -n "$id" ] || diag "no queued id" || return 1
	wait_until 20 has_sink_file "unverified domain mail $RUN" || diag "nothing arrived in the sink" || return 1
	sleep 0.3
	F3=$(sink_file "unverified domain mail $RUN")
}
check "mail for acme From jiro@example.jp (unverified) is accepted and delivered" submit3
if [ -n "$F3" ]; then
	check "unverified domain: header From is the platform sender \"Jiro (via MakeLeaps)\" <bounce@makeleaps.test>" from_platform "$F3" "Jiro (via MakeLeaps)"
	check "unverified domain: Reply-To is jiro@example.jp" \
		eval 'msg hdr "$F3" Reply-To | grep -qF jiro@example.jp || diag "Reply-To: $(msg hdr "$F3" Reply-To)"'
	check "unverified domain: envelope sender is bounce-md_<verp>@m.makeleaps.test" \
		eval '[[ "$(mail_from_of "$F3")" =~ ^bounce-md_[0-9a-v]+@m\.makeleaps\.test$ ]] || diag "X-Mail-Args: $(grep ^X-Mail-Args "$F3")"'
	check "unverified domain: DKIM d=makeleaps.test verifies with dkimpy" \
		dkim_ok "$F3" makeleaps.test hermod._domainkey.makeleaps.test. "$PLATFORM_TXT"
fi

# ---------------------------------------------------------------------------
# j. bounce intake, suppression

# write_dsn FILE VERP FINAL-RECIPIENT ORIGINAL-FILE
write_dsn() {
	local date
	date=$(date -R)
	{
		printf 'Return-Path: <>\n'
		printf 'From: MAILER-DAEMON@mx.dest.test (Mail Delivery System)\n'
		printf 'To: %s\n' "$2"
		printf 'Subject: Undelivered Mail Returned to Sender\n'
		printf 'Date: %s\n' "$date"
		printf 'Message-ID: <dsn-%s-%s@mx.dest.test>\n' "$RUN" "$RANDOM"
		printf 'Auto-Submitted: auto-replied\n'
		printf 'MIME-Version: 1.0\n'
		printf 'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="DSN-BOUNDARY-%s"\n' "$RUN"
		printf '\n'
		printf 'This is a MIME-encapsulated message.\n\n'
		printf -- '--DSN-BOUNDARY-%s\n' "$RUN"
		printf 'Content-Description: Notification\nContent-Type: text/plain; charset=us-ascii\n\n'
		printf 'This is the mail system at host mx.dest.test.\n\n'
		printf "I'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients.\n\n"
		printf '<%s>: host mx.dest.test[192.0.2.25] said: 550 5.1.1 <%s>:\n    Recipient address rejected: User unknown in virtual mailbox table\n\n' "$3" "$3"
		printf -- '--DSN-BOUNDARY-%s\n' "$RUN"
		printf 'Content-Description: Delivery report\nContent-Type: message/delivery-status\n\n'
		printf 'Reporting-MTA: dns; mx.dest.test\nX-Postfix-Queue-ID: 4Xyz1234\nArrival-Date: %s\n\n' "$date"
		printf 'Final-Recipient: rfc822; %s\nOriginal-Recipient: rfc822;%s\nAction: failed\nStatus: 5.1.1\n' "$3" "$3"
		printf 'Remote-MTA: dns; mx.dest.test\n'
		printf 'Diagnostic-Code: smtp; 550 5.1.1 <%s>: Recipient address rejected: User\n    unknown in virtual mailbox table\n\n' "$3"
		printf -- '--DSN-BOUNDARY-%s\n' "$RUN"
		printf 'Content-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n\n'
		msg raw "$4" | tr -d '\r' | sed '/^$/q'
		printf -- '--DSN-BOUNDARY-%s--\n' "$RUN"
	} >"$1"
}
send_dsn() { # send_dsn TRANSCRIPT VERP DSNFILE
	swaks --server "127.0.0.1:$BOUNCEPORT" --timeout 15 --from '<>' --to "$2" --data @"$3" >"$1" 2>&1
}

dsn1() {
	[ -n "$VERP1" ] && [ -n "$ID1" ] || diag "no delivery of rcpt1 to bounce" || return 1
	write_dsn "$TMP/dsn1.eml" "$VERP1" rcpt1@dest.test "$F1"
	send_dsn "$TMP/j1.txt" "$VERP1" "$TMP/dsn1.eml" || diag "swaks: $(grep -E '^(<|\*\*\*)' "$TMP/j1.txt" | tail -n 4)"
}
check "a DSN to the VERP address of rcpt1's delivery is accepted by the bounce listener" dsn1
bounced1() {
	local out
	wait_until 10 status_is "$ID1" rcpt1@dest.test bounced || diag "status: $(hq status "$ID1" 2>&1)" || return 1
	out=$(hq status "$ID1" 2>&1)
	grep -qF メールが宛先のシステムで拒否されました <<<"$out" || diag "$out"
}
check "hermod status shows rcpt1 bounced with the wording メールが宛先のシステムで拒否されました" bounced1
check "hermod suppress show rcpt1@dest.test: suppressed with reason user-unknown" \
	eval 'out=$(hq suppress show rcpt1@dest.test 2>&1) && grep -qF user-unknown <<<"$out" || diag "$out"'

suppressed_msg() {
	local id out
	sub "$TMP/j2.txt" --from member@customer.test --to rcpt1@dest.test \
		--header 'From: "Taro Seikyu" <taro@customer.test>' --body "to a suppressed address $RUN" ||
		diag "swaks: $(grep -E '^(<|\*\*\*)' "$TMP/j2.txt" | tail -n 3)" || return 1
	id=$(queued_id "$TMP/j2.txt")
	[ -n "$id" ] || diag "no queued id" || return 1
	wait_until 10 status_is "$id" rcpt1@dest.test suppressed || diag "status: $(hq status "$id" 2>&1)" || return 1
	out=$(hq status "$id" 2>&1)
	grep -qF 送信されませんでした <<<"$out" || diag "$out" || return 1
	sleep 3 # give a wrong delivery time to show up
	! has_sink_file "to a suppressed address $RUN" || diag "it arrived at the sink"
}
check "a message to the suppressed rcpt1 is accepted (250) but suppressed (送信されませんでした) and not delivered" suppressed_msg
check "hermod suppress rm rcpt1@dest.test" eval 'out=$(hq suppress rm rcpt1@dest.test 2>&1) || diag "$out"'
unsuppressed_msg() {
	local id
	sub "$TMP/j3.txt" --from member@customer.test --to rcpt1@dest.test \
		--header 'From: "Taro Seikyu" <taro@customer.test>' --body "after suppress rm $RUN" ||
		diag "swaks: $(grep -E '^(<|\*\*\*)' "$TMP/j3.txt" | tail -n 3)" || return 1
	id=$(queued_id "$TMP/j3.txt")
	[ -n "$id" ] || diag "no queued id" || return 1
	wait_until 20 status_is "$id" rcpt1@dest.test sent || diag "status: $(hq status "$id" 2>&1)" || return 1
	wait_until 10 has_sink_file "after suppress rm $RUN" || diag "not in the sink"
}
check "after suppress rm, a message to rcpt1 is sent and arrives" unsuppressed_msg

# ---------------------------------------------------------------------------
# k. forged bounces

rcpt_refused() { # rcpt_refused TRANSCRIPT ADDRESS
	if swaks --server "127.0.0.1:$BOUNCEPORT" --timeout 15 --from '<>' --to "$2" \
		--body "forged $RUN" >"$1" 2>&1; then
		diag "swaks succeeded: $(grep -E '^<' "$1" | tail -n 3)"
		return 1
	fi
	# the 550 must answer RCPT TO
	awk '/^ *[-~]> +RCPT TO/ {r=1; next} r && /^<\*\* +550/ {ok=1} r && /^</ {r=0} END {exit !ok}' "$1" ||
		diag "$(grep -E '^ *(<|[-~]>|\*\*\*)' "$1" | tail -n 6)"
}
check "bounce listener: bad VERP HMAC gets 550 at RCPT" rcpt_refused "$TMP/k1.txt" bounce-md_0000000000000000000abcdefgh@m.makeleaps.test
check "bounce listener: a non-VERP address someone@m.makeleaps.test gets 550 at RCPT" rcpt_refused "$TMP/k2.txt" someone@m.makeleaps.test
check "bounce listener: relaying to victim@gmail.com gets 550 at RCPT" rcpt_refused "$TMP/k3.txt" victim@gmail.com
forged_dsn() {
	[ -n "$VERP2" ] && [ -n "$ID2" ] || diag "no delivery of rcpt2" || return 1
	write_dsn "$TMP/dsn2.eml" "$VERP2" other@dest.test "$F2"
	send_dsn "$TMP/k4.txt" "$VERP2" "$TMP/dsn2.eml" || true # refusing it is fine too
	sleep 2
	status_is "$ID2" rcpt2@dest.test sent || diag "rcpt2: $(status_of "$ID2" rcpt2@dest.test)" || return 1
	! hq suppress show other@dest.test >/dev/null 2>&1 || diag "other@dest.test: $(hq suppress show other@dest.test 2>&1)" || return 1
	! hq suppress show rcpt2@dest.test >/dev/null 2>&1 || diag "rcpt2@dest.test: $(hq suppress show rcpt2@dest.test 2>&1)"
}
check "a DSN to rcpt2's VERP naming other@dest.test leaves rcpt2 sent and suppresses nobody" forged_dsn

# ---------------------------------------------------------------------------
# l. kill -9 durability

stop_pid "$SINK_PID"
SINK_PID=
cat >"$TMP/bulk.py" <<'EOF'
import smtplib, sys, re
port, run, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = smtplib.SMTP('127.0.0.1', port, timeout=15)
s.ehlo('client.test')
s.login('app', 'secret-pass')
ids = []
with open(out, 'w') as f:
    for i in range(50):
        rcpt = 'bulk%d@dest.test' % i
        msg = ('From: "Bulk Sender" <bulk@customer.test>\r\nTo: %s\r\nSubject: bulk %d\r\n'
               'Message-ID: <bulk-%d-%s@customer.test>\r\n\r\ndurability %d of %s\r\n') % (rcpt, i, i, run, i, run)
        s.mail('member@customer.test')
        s.rcpt(rcpt)
        code, resp = s.data(msg.encode())
        m = re.search(rb'queued as ([0-9a-v]{16})\s*$', resp)
        if code == 250 and m:
            f.write('%s %s %d\n' % (m.group(1).decode(), rcpt, i))
            f.flush()
        else:
            print('message %d: %d %s' % (i, code, resp), file=sys.stderr)
s.quit()
EOF
bulk() {
	"$PY" -P "$TMP/bulk.py" "$SUBPORT" "$RUN" "$TMP/bulk-ids.txt" >"$TMP/bulk.log" 2>&1 || diag "$(tail -n 5 "$TMP/bulk.log")" || return 1
	[ "$(wc -l <"$TMP/bulk-ids.txt")" -eq 50 ] || diag "$(wc -l <"$TMP/bulk-ids.txt") acknowledged: $(tail -n 5 "$TMP/bulk.log")"
}
check "50 messages submitted over one smtplib connection are all acknowledged with ids" bulk
sleep 1.5 # let the first attempts fail against the stopped sink
check "with the sink stopped, the messages are deferred" \
	eval 'n=$(api "/v1/queue?status=deferred&limit=500" | "$PY" -P -c "import json,sys; print(len(json.load(sys.stdin).get(\"messages\") or []))") && [ "$n" -gt 0 ] || diag "deferred messages: ${n:-?}"'
waiting_wording() {
	local id out
	id=$(head -n 1 "$TMP/bulk-ids.txt" | cut -d' ' -f1)
	out=$(hq status "$id" 2>&1) || { diag "$out"; return 1; }
	grep -q 'deferred' <<<"$out" && grep -q '送信結果待ち' <<<"$out" || diag "$out"
}
check "hermod status of a deferred message shows deferred with the wording 送信結果待ち" waiting_wording
kill -KILL "$HERMOD_PID" 2>/dev/null || notok "hermod was still running before kill -9"
wait "$HERMOD_PID" 2>/dev/null || true
HERMOD_PID=
echo "--- restart after kill -9 ---" >>"$TMP/hermod.log"
if start_hermod; then
	ok "hermod restarts after kill -9"
else
	notok "hermod restarts after kill -9"
fi
start_sink || notok "smtp-sink restarts"
# ids_sent IDS-FILE BASE TOKEN-FILE: every "id rcpt n" line of IDS-FILE is
# sent according to the API at BASE.
ids_sent() {
	"$PY" -P - "$1" "$2" "$(cat "$3")" <<'EOF'
import json, sys, urllib.request
ids, base, tok = sys.argv[1], sys.argv[2], sys.argv[3]
bad = []
for line in open(ids):
    mid, rcpt, _ = line.split()
    try:
        req = urllib.request.Request(base + '/v1/messages/' + mid, headers={'Authorization': 'Bearer ' + tok})
        m = json.load(urllib.request.urlopen(req, timeout=5))
        st = [r['status'] for r in m['recipients'] if r['address'] == rcpt]
    except Exception as e:
        st = [str(e)]
    if st != ['sent']:
        bad.append('%s %s %s' % (mid, rcpt, st))
print('\n'.join(bad[:5]) + ('\n(%d not sent)' % len(bad) if bad else ''))
sys.exit(1 if bad else 0)
EOF
}
# all_sent: every message of the kill -9 burst is sent.
all_sent() { ids_sent "$TMP/bulk-ids.txt" "http://127.0.0.1:$APIPORT" "$TMP/data/api.token"; }
# bulk_markers: the "durability N of RUN" markers in the sink, one per file.
bulk_markers() { grep -rhoE "durability [0-9]+ of $RUN" "$SINKDIR" 2>/dev/null || true; }
all_arrived() {
	local n
	n=$(bulk_markers | sort -u | wc -l)
	[ "$n" -eq 50 ] || diag "$((50 - n)) of 50 not in the sink"
}
check "after kill -9 and restart, every acknowledged message is sent within 30 s" \
	eval '[ -s "$TMP/bulk-ids.txt" ] && { wait_until 30 all_sent >/dev/null || diag "$(all_sent)"; }'
check "every acknowledged message arrived at the sink" eval 'wait_until 5 all_arrived'
dups() {
	local d
	d=$(bulk_markers | sort | uniq -d | wc -l)
	[ "$d" -eq 0 ] || diag "$d messages arrived more than once (allowed after a crash, reported for information)"
}
# Duplicates after a crash are allowed (at-least-once), so only reported.
DIAG=
dups || printf '# note: %s\n' "$DIAG"
DIAG=

# ---------------------------------------------------------------------------
# n. postmaster views (issue 14): queue summary, every attempt in queue
# show, -json, relay.delay_warning ("3s" above: one delayed event)

# A second smtp-sink that greylists every RCPT, routed for grey.test (SIGHUP).
GREYPORT=$("$PY" -P -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/sbin/smtp-sink -u nobody -r rcpt -b "451 4.7.1 greylisted, come back later" "127.0.0.1:$GREYPORT" 10 >>"$TMP/greysink.log" 2>&1 &
GREY_PID=$!
wait_until 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$GREYPORT" 2>/dev/null || notok "greylisting smtp-sink listens on 127.0.0.1:$GREYPORT"
cat >>"$CONF" <<EOF

[[relay.route]]
domain = "grey.test"
host = "127.0.0.1:$GREYPORT"
EOF
reloads() { grep -c "configuration reloaded" "$TMP/hermod.log" || true; }
R0=$(reloads)
kill -HUP "$HERMOD_PID"
reloaded() { [ "$(reloads)" -gt "$R0" ]; }
check "SIGHUP reloads the route for grey.test" eval 'wait_until 10 reloaded || diag "no reload logged"'
GID=
submit_grey() {
	sub "$TMP/sg.txt" --from member@customer.test --to grey1@grey.test,grey2@grey.test \
		--header 'X-Hermod-Ref: grey-1' --body "greylisted $RUN" || diag "swaks failed: $(tail -n 5 "$TMP/sg.txt")" || return 1
	GID=$(queued_id "$TMP/sg.txt")
	[ -n "$GID" ] || diag "no queue id in: $(grep -- '<-' "$TMP/sg.txt" | tail -n 3)"
}
check "a message to two greylisted recipients is accepted" submit_grey
# jcheck EXPR: reads one JSON object from stdin as d; succeeds if the Python expression holds.
jcheck() { "$PY" -P -c 'import json, sys; d = json.loads(sys.stdin.read()); sys.exit(0 if eval(sys.argv[1]) else 1)' "$1"; }
summary_grey() {
	local out line
	out=$(hq queue summary 2>&1) || diag "$out" || return 1
	line=$(grep -E '^grey\.test ' <<<"$out") || true
	[[ "$line" =~ ^grey\.test\ +0\ +2\ +0\ +[0-9]+[smhd][0-9smh]*\ +2×\ 451\ 4\.7\.1\ greylisted,\ come\ back\ later$ ]] || diag "$out"
}
check "hermod queue summary: grey.test 0 queued, 2 deferred, 0 held, oldest age, 2× 451 4.7.1 greylisted, come back later" \
	eval 'wait_until 15 summary_grey'
check "hermod queue summary -by mx -json names 127.0.0.1 with the 2 deferred recipients" \
	eval 'out=$(hq queue summary -by mx -json 2>&1) && jcheck "any(r[\"key\"] == \"127.0.0.1\" and r[\"deferred\"] == 2 for r in d[\"rows\"])" <<<"$out" || diag "$out"'
check "GET /v1/queue/summary?by=account lists the waiting recipients" \
	eval 'out=$(api "/v1/queue/summary?by=account") && jcheck "d[\"by\"] == \"account\" and sum(r[\"deferred\"] for r in d[\"rows\"]) >= 2" <<<"$out" || diag "$out"'
attempt_lines() {
	local out n
	out=$(hq queue show "$GID" 2>&1) || diag "$out" || return 1
	n=$(grep -cE "^    #1 [0-9T:.-]+ 127\.0\.0\.1\[127\.0\.0\.1:$GREYPORT\] plain deferred 451 4\.7\.1 greylisted, come back later took [0-9.]+(µs|ms|s)$" <<<"$out") || true
	[ "$n" -eq 2 ] || diag "$out"
}
check "hermod queue show lists each attempt: time, MX[IP:port], plain, deferred 451 4.7.1 text, duration" \
	eval '[ -n "$GID" ] && attempt_lines'
# Both recipients past 3 s and retried a few times since: exactly one
# delayed event each, status still deferred.
tried_5() { hq status "$GID" -json 2>/dev/null | jcheck 'all(r["attempts"] >= 5 for r in d["recipients"])'; }
delayed_once() {
	local out
	out=$(hq queue show "$GID" -json 2>&1) || diag "$out" || return 1
	jcheck '[sum(1 for e in r["events"] if e.get("type") == "delayed") for r in d["recipients"]] == [1, 1] and all(e["status"] == "deferred" for r in d["recipients"] for e in r["events"] if e.get("type") == "delayed") and all(r["status"] == "deferred" for r in d["recipients"])' <<<"$out" || diag "$out"
}
check "relay.delay_warning: each recipient gets exactly one delayed event after 3 s and stays deferred" \
	eval '[ -n "$GID" ] && { wait_until 20 tried_5 || diag "fewer than 5 attempts"; } && delayed_once'
check "hermod queue show names the delayed event (event=delayed)" \
	eval 'out=$(hq queue show "$GID" 2>&1) && [ "$(grep -c "status=deferred, event=delayed" <<<"$out")" -eq 2 ] || diag "$out"'
tail_json() {
	local out
	out=$(hq queue tail -json -n 100000 2>&1) || diag "$out" || return 1
	"$PY" -P -c '
import json, sys
gid = sys.argv[1]
evs = [json.loads(l) for l in sys.stdin.read().splitlines()]
mine = [e for e in evs if e["message_id"] == gid]
ok = mine and sum(1 for e in mine if e.get("type") == "delayed") == 2 and all("seq" in e and "status" in e for e in evs)
sys.exit(0 if ok else 1)' "$GID" <<<"$out" || diag "$(tail -n 3 <<<"$out")"
}
check "hermod queue tail -json prints one JSON event per line, the delayed ones among them" tail_json
check "hermod status -json and queue ls -json print one JSON object each" \
	eval 'out=$(hq status "$GID" -json) && jcheck "d[\"id\"] == \"$GID\" and d[\"recipients\"][0][\"message\"][\"en\"] == \"Waiting for the result\"" <<<"$out" && out=$(hq queue ls -json -status deferred) && jcheck "\"$GID\" in [m[\"id\"] for m in d[\"messages\"]] and \"deferred\" in d[\"counts\"]" <<<"$out" || diag "$out"'
if [ -n "$GID" ]; then hq queue delete "$GID" >/dev/null 2>&1 || true; fi
stop_pid "$GREY_PID"
GREY_PID=

# ---------------------------------------------------------------------------
# o. acting on many messages: queue hold, release, retry, delete (issue 14)

# api_post PATH JSON: POST on the HTTP API with the daemon's token; prints the body.
api_post() {
	"$PY" -P -c '
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode(), method="POST",
    headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip(), "Content-Type": "application/json"})
sys.stdout.write(urllib.request.urlopen(req, timeout=10).read().decode())' "http://127.0.0.1:$APIPORT$1" "$TMP/data/api.token" "$2"
}
# For this block the sink answers every RCPT with a 4xx: mail waits deferred.
restart_sink_soft() {
	stop_pid "$SINK_PID"
	SINK_PID=
	/usr/sbin/smtp-sink -u nobody -c -r RCPT -d "$SINKDIR/%M%S." "127.0.0.1:$SINKPORT" 100 >>"$TMP/sink.log" 2>&1 &
	SINK_PID=$!
	wait_until 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$SINKPORT" 2>/dev/null
}
BK_IDS=()
bulk_setup() {
	local i id
	[ -n "$HERMOD_PID" ] || diag "hermod is not running" || return 1
	restart_sink_soft || diag "smtp-sink -r RCPT did not start" || return 1
	for i in 1 2 3; do
		sub "$TMP/bk$i.txt" --from member@customer.test --to "bk$i@hold.test" --header "X-Hermod-Ref: bk-$RUN" \
			--body "bulk $i of $RUN" || diag "swaks failed: $(tail -n 3 "$TMP/bk$i.txt")" || return 1
		id=$(queued_id "$TMP/bk$i.txt")
		[ -n "$id" ] || diag "no queued id for bk$i" || return 1
		BK_IDS+=("$id")
	done
	for i in 0 1 2; do
		wait_until 20 status_is "${BK_IDS[$i]}" "bk$((i + 1))@hold.test" deferred ||
			diag "bk$((i + 1)) is $(status_of "${BK_IDS[$i]}" "bk$((i + 1))@hold.test"), not deferred" || return 1
	done
}
check "three messages to hold.test wait deferred while the sink answers 4xx" bulk_setup

bk_dry() {
	local out
	out=$(hq queue hold -domain HOLD.test -ref "bk-$RUN" -dry-run 2>&1) || diag "$out" || return 1
	grep -qF "dry run: 3 recipient(s) in 3 message(s) would be held" <<<"$out" || diag "$out" || return 1
	grep -qF "${BK_IDS[0]}" <<<"$out" || diag "sample lacks ${BK_IDS[0]}: $out" || return 1
	status_is "${BK_IDS[0]}" bk1@hold.test deferred || diag "dry run changed bk1 to $(status_of "${BK_IDS[0]}" bk1@hold.test)"
}
check "hermod queue hold -domain -ref -dry-run counts 3 recipients, lists a sample, changes nothing" bk_dry
check "hermod queue retry -ref makes the 3 deferred recipients due now" \
	eval 'out=$(hq queue retry -ref "bk-$RUN" 2>&1) && grep -qF "3 recipient(s) in 3 message(s) due now" <<<"$out" || diag "$out"'

bk_hold() {
	local out i
	out=$(hq queue hold -domain hold.test -ref "bk-$RUN" 2>&1) || diag "$out" || return 1
	grep -qF "3 recipient(s) in 3 message(s) held" <<<"$out" || diag "$out" || return 1
	for i in 0 1 2; do
		status_is "${BK_IDS[$i]}" "bk$((i + 1))@hold.test" held || diag "bk$((i + 1)): $(status_of "${BK_IDS[$i]}" "bk$((i + 1))@hold.test")" || return 1
	done
	hq status "${BK_IDS[0]}" | grep -qF 送信結果待ち || diag "$(hq status "${BK_IDS[0]}")" || return 1
	hq queue show "${BK_IDS[0]}" | grep -qE "^recipient 0 is held; its relay.max_age \([0-9hms]+\) ends " ||
		diag "queue show: $(hq queue show "${BK_IDS[0]}" | tail -n 3)"
}
check "hermod queue hold puts them on hold: status held, wording 送信結果待ち, queue show says when max_age ends" bk_hold

# attempts_of ID: the attempts of the first recipient, from the API.
attempts_of() {
	api "/v1/messages/$1" | "$PY" -P -c 'import json,sys; print(json.load(sys.stdin)["recipients"][0]["attempts"])'
}
BK_ATT2=
bk_release() {
	local out
	BK_ATT2=$(attempts_of "${BK_IDS[1]}")
	stop_pid "$SINK_PID"
	SINK_PID=
	start_sink || diag "smtp-sink did not restart" || return 1
	out=$(hq queue release "${BK_IDS[0]}" 2>&1) || diag "$out" || return 1
	grep -qF "1 recipient(s) in 1 message(s) released" <<<"$out" || diag "$out" || return 1
	wait_until 20 has_sink_file "bulk 1 of $RUN" || diag "released message did not arrive; bk1 is $(status_of "${BK_IDS[0]}" bk1@hold.test)" || return 1
	wait_until 10 status_is "${BK_IDS[0]}" bk1@hold.test sent || diag "bk1 is $(status_of "${BK_IDS[0]}" bk1@hold.test)"
}
check "hermod queue release ID: the released message is delivered" bk_release
bk_still_held() {
	# retry is 1 s: a pending recipient would have been tried again by now.
	status_is "${BK_IDS[1]}" bk2@hold.test held || diag "bk2 is $(status_of "${BK_IDS[1]}" bk2@hold.test)" || return 1
	[ "$(attempts_of "${BK_IDS[1]}")" = "$BK_ATT2" ] || diag "bk2 attempts $BK_ATT2 -> $(attempts_of "${BK_IDS[1]}")" || return 1
	! has_sink_file "bulk 2 of $RUN" || diag "held message bk2 reached the sink"
}
check "a held message is not attempted while the sink accepts again (attempts unchanged, not in the sink)" bk_still_held

bk_api() {
	local out
	out=$(api_post /v1/queue/delete "{\"ref\": \"bk-$RUN\", \"rcpt\": \"BK3@hold.test\", \"dry_run\": true}") || diag "$out" || return 1
	grep -qE '"recipients": 1,' <<<"$out" && grep -qE '"dry_run": true' <<<"$out" || diag "$out" || return 1
	status_is "${BK_IDS[2]}" bk3@hold.test held || diag "dry run deleted bk3" || return 1
	out=$(api_post /v1/queue/release "{\"ids\": [\"${BK_IDS[1]}\"]}") || diag "$out" || return 1
	grep -qE '"recipients": 1,' <<<"$out" || diag "$out" || return 1
	wait_until 20 has_sink_file "bulk 2 of $RUN" || diag "bk2 did not arrive after POST /v1/queue/release" || return 1
	out=$(api_post /v1/queue/delete "{\"ref\": \"bk-$RUN\", \"status\": \"held\"}") || diag "$out" || return 1
	grep -qE '"messages": 1,' <<<"$out" || diag "$out" || return 1
	! hq queue show "${BK_IDS[2]}" >/dev/null 2>&1 || diag "bk3 still in the queue"
}
check "POST /v1/queue/delete dry_run, /v1/queue/release by id, /v1/queue/delete by ref+status" bk_api
bk_audit() {
	local next
	next=$(api "/v1/events?tail=1" | "$PY" -P -c 'import json,sys; print(json.load(sys.stdin)["next"])') || return 1
	api "/v1/events?after=$((next > 300 ? next - 300 : 0))" | "$PY" -P -c '
import json, sys
ids = sys.argv[1:]
got = sorted((ids.index(e["message_id"]), e["status"]) for e in json.load(sys.stdin)["events"]
             if e["message_id"] in ids and e.get("source") == "admin")
# each: retry (stays deferred) and hold; bk1, bk2: released back to deferred;
# bk3: deleted while held.
want = [(0, "deferred"), (0, "deferred"), (0, "held"), (1, "deferred"), (1, "deferred"), (1, "held"),
        (2, "deferred"), (2, "held"), (2, "held")]
if got != want:
    print(got)
    sys.exit(1)' "${BK_IDS[@]}" >"$TMP/bk-audit.txt" || diag "admin events (rcpt, status): $(cat "$TMP/bk-audit.txt")"
}
check "retry, hold, release and delete are admin events in /v1/events" bk_audit
bk_usage() {
	local rc=0
	hq queue hold >/dev/null 2>&1 || rc=$?
	[ "$rc" -eq 2 ] || diag "queue hold with no id and no filter: exit $rc, want 2 (usage)"
}
check "hermod queue hold with no id and no filter is a usage error (exit 2), never the whole queue" bk_usage

# ---------------------------------------------------------------------------
# m. SIGTERM

sigterm() {
	local i rc=0 pid=$HERMOD_PID
	[ -n "$pid" ] || diag "hermod is not running" || return 1
	kill -TERM "$pid"
	for ((i = 0; i < 150; i++)); do # shutdown_timeout 10 s, plus 5 s
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && diag "still running 15 s after SIGTERM" && return 1
	wait "$pid" || rc=$?
	HERMOD_PID=
	[ "$rc" -eq 0 ] || diag "exit status $rc"
}
check "SIGTERM: hermod exits 0 within shutdown_timeout" sigterm

# ---------------------------------------------------------------------------
# q. backup under load and restore (issue 14)

stop_pid "$SINK_PID" # the mail acknowledged before the backup waits in the queue
SINK_PID=
echo "--- start for backup ---" >>"$TMP/hermod.log"
start_hermod || fatal "hermod starts again for the backup checks"
BK=$TMP/backup.tar
backup_under_load() {
	"$PY" -P "$TMP/bulk.py" "$SUBPORT" "bkA-$RUN" "$TMP/bk-a.txt" >"$TMP/bk-a.log" 2>&1 || diag "$(tail -n 3 "$TMP/bk-a.log")" || return 1
	[ "$(wc -l <"$TMP/bk-a.txt")" -eq 50 ] || diag "$(wc -l <"$TMP/bk-a.txt") of 50 acknowledged before the backup" || return 1
	"$PY" -P "$TMP/bulk.py" "$SUBPORT" "bkB-$RUN" "$TMP/bk-b.txt" >"$TMP/bk-b.log" 2>&1 &
	local load=$! out rc=0
	out=$(hq backup -o "$BK" -secrets 2>&1) || rc=$?
	wait "$load" || diag "submissions during the backup: $(tail -n 3 "$TMP/bk-b.log")" || return 1
	[ "$rc" -eq 0 ] || diag "backup: $out" || return 1
	[ "$(wc -l <"$TMP/bk-b.txt")" -eq 50 ] || diag "$(wc -l <"$TMP/bk-b.txt") of 50 acknowledged during the backup" || return 1
	[ "$(stat -c %a "$BK")" = 600 ] || diag "archive mode $(stat -c %a "$BK")" || return 1
	grep -q '^wrote .*secret files' <<<"$out" || diag "$out"
}
check "hermod backup -o FILE -secrets on the running daemon while 50 messages are submitted" backup_under_load
check "hermod backup refuses to overwrite an existing file" eval '! hq backup -o "$BK" >/dev/null 2>&1'
stop_pid "$HERMOD_PID"
HERMOD_PID=
mkdir -p "$TMP/busy" && touch "$TMP/busy/x"
check "hermod restore refuses a non-empty directory" \
	eval 'out=$("$H" restore "$BK" -data-dir "$TMP/busy" 2>&1); [ $? -ne 0 ] && grep -q "not empty" <<<"$out" || diag "$out"'
head -c 4096 "$BK" >"$TMP/cut.tar"
check "hermod restore refuses a truncated archive" eval '! "$H" restore "$TMP/cut.tar" -data-dir "$TMP/cut" >/dev/null 2>&1'
restore_ok() {
	local out bad
	out=$("$H" restore "$BK" -data-dir "$TMP/restored" 2>&1) || diag "$out" || return 1
	bad=$(find "$TMP/restored" \( -type f ! -perm 600 \) -o \( -type d ! -perm 700 \))
	[ -z "$bad" ] || diag "wrong modes: $bad" || return 1
	[ -s "$TMP/restored/api.token" ] || diag "no api.token restored"
}
check "hermod restore FILE -data-dir DIR restores with files 0600 and directories 0700" restore_ok
sed "s|^data_dir = .*|data_dir = \"$TMP/restored\"|" "$CONF" >"$TMP/restored.toml"
CONF_ORIG=$CONF
CONF=$TMP/restored.toml
echo "--- start on the restored data_dir ---" >>"$TMP/hermod.log"
start_hermod || fatal "hermod starts on the restored data_dir"
ok "hermod starts on the restored data_dir"
start_sink || notok "smtp-sink restarts"
check "from the restored data_dir, every message acknowledged before the backup is sent" \
	eval 'wait_until 30 ids_sent "$TMP/bk-a.txt" "http://127.0.0.1:$APIPORT" "$TMP/restored/api.token" >/dev/null || diag "$(ids_sent "$TMP/bk-a.txt" "http://127.0.0.1:$APIPORT" "$TMP/restored/api.token")"'
check "and each arrived at the sink" \
	eval 'n=$(grep -rhoE "durability [0-9]+ of bkA-$RUN" "$SINKDIR" | sort -u | wc -l); [ "$n" -eq 50 ] || diag "$n of 50 in the sink"'

# ---------------------------------------------------------------------------
# r. DKIM key rollover of a customer domain (issue 14), on the
# restored daemon (the restore kept acme's verified example.test)

ROT_NAME=
ROT_TXT=
ROT_VALUE=
rotate_start() {
	local out js
	out=$(hq domain rotate acme example.test 2>&1) || diag "$out" || return 1
	js=$(api /v1/accounts/acme/domains/example.test) || diag "API request failed" || return 1
	eval "$("$PY" -P -c '
import json, sys, shlex
r = json.loads(sys.argv[1]).get("rotation") or {}
print("ROT_NAME=" + shlex.quote(r.get("record", {}).get("name", "")) + "; ROT_VALUE=" + shlex.quote(r.get("record", {}).get("value", "")) + "; ROT_TXT=" + shlex.quote(r.get("public_txt", "")))
' "$js")"
	[[ "$ROT_NAME" =~ ^[a-z0-9]+\._domainkey\.example\.test$ ]] && [ "$ROT_NAME" != "${DKIM_NAME%.}" ] || diag "new record name '$ROT_NAME' (old $DKIM_NAME): $js" || return 1
	grep -qF "$ROT_NAME" <<<"$out" && grep -qF "Key rollover" <<<"$out" || diag "domain rotate output: $out"
}
check "hermod domain rotate acme example.test shows a new TXT record under a new selector" rotate_start
# rot_mail TAG: submits From taro@example.test, prints the sink file once delivered.
rot_mail() {
	sub "$TMP/rot-$1.txt" --from member@example.test --to "rot-$1@dest.test" \
		--header 'From: Taro <taro@example.test>' --header 'X-Hermod-Account: acme' \
		--body "rollover $1 $RUN" >/dev/null || return 1
	wait_until 20 has_sink_file "rollover $1 $RUN" || return 1
	sleep 0.3
	sink_file "rollover $1 $RUN"
}
check "before the new record is in DNS, mail is signed with the old key (dkimpy, old record)" \
	eval 'f=$(rot_mail before) || diag "not delivered" || return 1; out=$(msg dkim "$f" example.test "$DKIM_NAME" "$DKIM_TXT" 2>&1) || diag "$out"'
[ -n "$ROT_NAME" ] && echo "$ROT_NAME. TXT $ROT_VALUE" >>"$ZONE"
rotate_done() {
	local out
	out=$(hq domain check acme example.test 2>&1) || diag "$out" || return 1
	out=$(hq domain show acme example.test 2>&1) || diag "$out" || return 1
	grep -qE "Key rollover done .*may be removed after [0-9]{4}-" <<<"$out" || diag "$out"
}
check "once the new record is seen, hermod domain show states when the old record may be removed" rotate_done
check "after the switch, mail is signed with the new key (dkimpy, new record)" \
	eval 'f=$(rot_mail after) || diag "not delivered" || return 1; out=$(msg dkim "$f" example.test "$ROT_NAME" "$ROT_TXT" 2>&1) || diag "$out"'

# ---------------------------------------------------------------------------
# s. platform DKIM key rollover (issue 14)

PROT_NAME=
PROT_TXT=
PROT_ZONE=
prot_mail() { # prot_mail TAG: platform mail (From rewritten to the platform), prints the sink file
	sub "$TMP/prot-$1.txt" --from member@customer.test --to "prot-$1@dest.test" \
		--header 'From: "Taro" <taro@customer.test>' --body "platform rollover $1 $RUN" >/dev/null || return 1
	wait_until 20 has_sink_file "platform rollover $1 $RUN" || return 1
	sleep 0.3
	sink_file "platform rollover $1 $RUN"
}
dkim_rotate() {
	local out
	out=$(hq dkim rotate 2>&1) || diag "$out" || return 1
	PROT_ZONE=$(grep -E '^hm[0-9]+\._domainkey\.makeleaps\.test\.	TXT	"' <<<"$out")
	PROT_NAME=$(cut -f1 <<<"$PROT_ZONE")
	PROT_TXT=$(cut -f3 <<<"$PROT_ZONE" | sed -E 's/" "//g; s/^"//; s/"$//')
	[ -n "$PROT_NAME" ] && [[ "$PROT_TXT" =~ ^v=DKIM1\;\ k=rsa\;\ p= ]] && grep -q "selector hermod signs until" <<<"$out" || diag "$out"
}
check "hermod dkim rotate shows the new platform record as zone text under a new selector" dkim_rotate
check "hermod dkim rotate again while pending is refused" eval '! hq dkim rotate >/dev/null 2>&1'
check "before the new record is in DNS, platform mail is signed with the old key (dkimpy)" \
	eval 'f=$(prot_mail before) || diag "not delivered" || return 1; out=$(msg dkim "$f" makeleaps.test hermod._domainkey.makeleaps.test. "$PLATFORM_TXT" 2>&1) || diag "$out"'
[ -n "$PROT_ZONE" ] && echo "$PROT_ZONE" >>"$ZONE"
check "once hermod dkim check sees the new record, it says when the old one may be removed" \
	eval 'out=$(hq dkim check 2>&1); grep -qE "Key rollover done .*may be removed after [0-9]{4}-" <<<"$out" || diag "$out"'
check "hermod dkim show prints the new selector's record" eval 'out=$(hq dkim show 2>&1); grep -qF "$PROT_NAME" <<<"$out" || diag "$out"'
check "after the switch, platform mail is signed with the new key (dkimpy)" \
	eval 'f=$(prot_mail after) || diag "not delivered" || return 1; out=$(msg dkim "$f" makeleaps.test "$PROT_NAME" "$PROT_TXT" 2>&1) || diag "$out"'
