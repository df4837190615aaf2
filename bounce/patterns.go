package bounce

import "regexp"

// The phrase tables below are matched, lower-cased, against reply and
// diagnostic text by classify, in the order classify lists them. They are
// read-only after initialisation.

// hostBlocked is unmistakable evidence that our sending host, IP or domain
// is on a list: it wins over every code, including 5.1.1.
var hostBlocked = []string{
	"blocklist", "blacklist", "block list", "black list", "blocked list", "denylist", "deny list",
	"spamhaus", "spamcop", "barracuda", "sorbs", "abuseat", "uceprotect", "mailspike",
	"ipcheck.proofpoint", "senderbase", "senderscore",
	"blocked using", "listed at", "listed on", "listed in", "listed by",
	"banned sending ip", "ip reputation", "ip address reputation", "sending ip reputation",
	"poor reputation", "bad reputation", "low reputation", "sender reputation",
	"domain reputation", "bulk mail", "[tss09]", "permanently deferred",
	"weren't sent. please contact your internet service provider",
}

// reHostBlocked catches the same evidence where word boundaries matter
// ("rbl" is inside "garble") or an IP literal is part of the phrase.
var reHostBlocked = regexp.MustCompile(`\b(rbl|dnsbl|rbls|dnsbls|uribl)\b|access denied[^;]{0,80}\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b|messages from \[?\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\]? weren't sent`)

// rateLimited is checked before weakHostBlocked so that "too many
// connections from your IP" reads as rate-limited.
var rateLimited = []string{
	"rate limit", "ratelimit", "rate-limit", "rate limited", "throttl",
	"too many connections", "too many concurrent", "too many sessions", "too many messages",
	"too many mails", "too many emails", "too many recipients", "too many smtp",
	"unexpected volume", "[tss04]", "[ts01]", "[ts02]", "sending rate", "message rate",
	"connection rate", "exceeded the rate", "mail flood", "sending quota", "sending limit",
	"try to reduce", "slow down", "frequency limited", "connection frequency", "ip frequency",
	"too many concurrent connections", "exceeded the maximum number of connections",
}

// weakHostBlocked is about our host, but could also appear next to a more
// specific rate complaint.
var weakHostBlocked = []string{
	"client host rejected", "helo command rejected", "ehlo command rejected", "reverse dns",
	"reverse lookup", "reverse hostname", "reverse-dns", "rdns", "ptr record", "no ptr",
	"fcrdns", "your ip", "sending ip", "your server", "your host", "your mail server",
	"dynamic ip", "dynamic address", "dial-up", "dialup", "residential", "not allowed to send from",
	"ip address has been blocked", "ip is blocked", "ip address is blocked",
}

var securityText = []string{
	"dkim", "dmarc", "sender policy framework", "domainkeys", "unauthenticated",
	"authentication check", "authentication results", "must authenticate", "to authenticate",
	"authentication required", "not authenticated", "authentication failed",
	"starttls", "encryption required", "requires encryption", "tls required", "requires tls",
	"must use tls", "certificate", "resolver.rst.authrequired",
}

var reSecurity = regexp.MustCompile(`\b(spf|tls|arc)\b`)

// senderRejected is about hermod's envelope sender; it comes before the
// recipient rules because "Sender address rejected: Domain not found" must
// not read as host-unknown.
var senderRejected = []string{
	"sender address rejected", "sender rejected", "domain of sender", "sender domain",
	"sender verify failed", "sender verification", "verify sender", "mail from address",
	"envelope sender", "envelope from", "invalid sender", "unknown sender", "bad sender",
	"sender address is", "sender is not", "sender denied", "return path", "return-path",
	"mail from rejected", "sender address has null mx", "sender's domain", "sender's address",
	"senders domain", "sender's email", "your domain", "from domain", "sending domain",
	// Google Groups: the poster (us) may not post; not proof the address is wrong.
	"the group you tried to contact", "permission to post", "投稿する権限", "連絡しようとしたグループ",
}

var expiredText = []string{
	"retry timeout exceeded", "retry time not reached", "failing for a long time",
	"in the queue too long", "too long in queue", "queue lifetime", "message expired",
	"delivery expired", "delivery time expired", "lifetime exceeded", "could not be delivered within",
	"envelope expired", "not delivered within", "aborted after", "delivery attempts exhausted",
	"retry time exceeded", "maximum retry", "giving up on", "gave up after",
	"配信期限", "時間切れ",
}

var reExpired = regexp.MustCompile(`\bfailed (?:after )?\d+ attempts|\bdelivery failed \d+ attempts|\bhas been in the queue (?:for )?(?:more than|over)`)

// reNotListed is Lotus Notes/Domino's unknown user.
var reNotListed = regexp.MustCompile(`not listed in (?:the )?(?:[a-z]+ )?(?:public )?(?:domino )?(?:directory|address book|names? and address book)`)

// relayDenied means the MX does not take mail for the domain from us: not a
// network problem, and not proof the address is wrong.
var relayDenied = []string{
	"relay access denied", "relaying denied", "relay not permitted", "unable to relay",
	"not permitted to relay", "relaying not allowed", "relay denied", "we do not relay",
}

// noAddressText is an MX host without A/AAAA records: the recipient's DNS
// is broken, which is not proof the address is wrong.
var noAddressText = []string{
	"host found but no data record", "no address associated with", "has no a record",
	"no a or aaaa record", "no address records",
}

var notAcceptText = []string{
	"does not accept mail", "does not accept email", "doesn't accept mail", "does not accept e-mail",
	"accepts no mail", "null mx", "nullmx", "does not receive mail", "no mail accepted",
}

var hostUnknownText = []string{
	"host not found", "host unknown", "unknown host", "domain not found", "no such domain",
	"domain does not exist", "domain doesn't exist", "domain name not found", "nxdomain",
	"name or service not known", "no mx", "unrouteable mail domain", "unroutable mail domain",
	"unroutable domain", "host or domain name not found", "couldn't find any host",
	"could not find any host", "unknown domain", "no such host", "domain is not valid",
	"couldn't find a mail exchanger", "could not find a mail exchanger", "invalid domain",
	"ドメインが存在しません", "ドメインが見つかりません", "ドメイン名が存在",
}

var mailboxFullText = []string{
	"mailbox full", "mailbox is full", "mailbox has exceeded", "mailbox size limit",
	"quota", "out of storage", "exceeded storage", "storage allocation", "account is full",
	"inbox is full", "full mailbox", "mail box full", "mailbox is over", "user is over",
	"insufficient disk space", "容量", "メールボックスがいっぱい", "メールボックスが一杯",
}

var userUnknownText = []string{
	"user unknown", "unknown user", "no such user", "no such mailbox", "no such recipient",
	"no such address", "no such person", "user not found", "user does not exist", "user doesn't exist",
	"recipient not found", "recipientnotfound", "recipnotfound", "mailbox not found",
	"mailbox does not exist", "mailbox doesn't exist", "address does not exist",
	"address doesn't exist", "account does not exist", "account doesn't exist", "does not exist",
	"user doesn't have", "user does not have", "unknown recipient", "recipient unknown",
	"invalid recipient", "invalid mailbox", "not a valid mailbox", "no mailbox here by that name",
	"unrouteable address", "address not found", "recipient no longer on server", "no longer on server", "addressee unknown", "unknown address",
	"recipient address rejected: unknown", "user invalid", "bad destination mailbox",
	"存在しません", "宛先不明", "ユーザ不明", "ユーザー不明", "アドレスが見つかりません",
}

var reSuspended = regexp.MustCompile(`\b(account|mailbox|user|address|recipient)\b[^.;:]{0,40}\b(suspended|disabled|deactivated|inactive|locked|frozen|closed|expired|no longer)\b`)

var suspendedText = []string{
	"inactive user", "disabled user", "user disabled", "account disabled", "mailbox disabled",
	"inactive account", "account inactive", "mailbox inactive", "not active", "no longer",
	"停止", "利用停止",
}

var tooBigText = []string{
	"too big", "too large", "message size", "size limit", "exceeds size", "maximum size",
	"maximum message size", "message length", "size exceeds", "exceeds the maximum",
	"サイズ",
}

var spamText = []string{
	"spam", "virus", "malware", "unsolicited", "junk mail", "phish", "infected",
	"迷惑メール",
}

var filteredText = []string{
	"content rejected", "filtered", "filter", "rejected by recipient", "blocked by recipient",
	"recipient has blocked", "refused by recipient", "header check", "body check",
	"受信拒否", "拒否設定", "指定受信",
}

var reFiltered = regexp.MustCompile(`\brules?\b`)

var networkText = []string{
	"loop", "too many hops", "hop count", "routing", "no route", "connection refused",
	"connection timed out", "connection reset", "timed out", "network is unreachable",
	"unreachable", "lost connection", "servfail", "temporary failure in name resolution",
	"delivery temporarily suspended", "connect to",
}

var systemText = []string{
	"system error", "internal error", "local problem", "local error", "server error",
	"system storage", "service not available", "service unavailable", "configuration error",
	"misconfigur", "temporarily unavailable", "resources",
	"queue file write error", "disk full", "out of disk",
}

var policyText = []string{
	"policy", "violat", "rfc", "not compliant", "administrative prohibition", "prohibited",
	"not allowed", "not permitted", "denied", "not authorized", "refused",
}

func matchRe(t string, re *regexp.Regexp) bool { return re.MatchString(t) }
