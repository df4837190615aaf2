package testnet

import (
	"net/smtp"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/miekg/dns"
)

func TestDNS(t *testing.T) {
	d := NewDNS(t)
	d.Add("a.test. 300 IN MX 10 mx.a.test.", "alias.test. 300 IN CNAME a.test.")
	d.Set("b.test", dns.TypeTXT, &dns.TXT{Hdr: dns.RR_Header{Name: "b.test.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"x"}})
	d.ServFail("bad.test", true)
	d.Truncate("a.test", true)
	ask := func(name string, qtype uint16, network string) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := (&dns.Client{Net: network, Timeout: time.Second}).Exchange(m, d.Addr())
		if err != nil {
			t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		qtype   uint16
		net     string
		rcode   int
		answers int
		soa     bool
		trunc   bool
	}{
		{"a.test.", dns.TypeMX, "udp", dns.RcodeSuccess, 0, false, true},
		{"A.TEST.", dns.TypeMX, "tcp", dns.RcodeSuccess, 1, false, false},
		{"a.test.", dns.TypeA, "tcp", dns.RcodeSuccess, 0, true, false},
		{"alias.test.", dns.TypeMX, "udp", dns.RcodeSuccess, 1, false, false},
		{"b.test.", dns.TypeTXT, "udp", dns.RcodeSuccess, 1, false, false},
		{"none.test.", dns.TypeA, "udp", dns.RcodeNameError, 0, true, false},
		{"bad.test.", dns.TypeA, "udp", dns.RcodeServerFailure, 0, false, false},
	} {
		r := ask(tc.name, tc.qtype, tc.net)
		if r.Rcode != tc.rcode || len(r.Answer) != tc.answers || (len(r.Ns) == 1) != tc.soa || r.Truncated != tc.trunc {
			t.Errorf("%s %s over %s: %v", tc.name, dns.TypeToString[tc.qtype], tc.net, r)
		}
	}
	if n := d.Queries("a.test", dns.TypeMX); n != 2 {
		t.Errorf("Queries(a.test, MX) = %d, want 2", n)
	}
	if n := d.TCPQueries(); n != 2 {
		t.Errorf("TCPQueries = %d, want 2", n)
	}
	d.Remove("b.test")
	d.SetNegativeTTL(0)
	if r := ask("b.test.", dns.TypeTXT, "udp"); r.Rcode != dns.RcodeNameError || len(r.Ns) != 0 {
		t.Errorf("b.test after Remove: %v", r)
	}
}

func TestSink(t *testing.T) {
	s := NewSink(t)
	s.Answer("later@dest.test", &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "later"})
	s.Refuse("gone@dest.test", &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "gone"})
	send := func(to string) error {
		return smtp.SendMail(s.Addr(), nil, "bounce-md_0123456789abcdefghijklmnopq@m.test", []string{to}, []byte("Subject: hi\r\n\r\nbody\r\n"))
	}
	for _, tc := range []struct {
		to   string
		want string // error text, "" for accepted
	}{
		{"later@dest.test", "451"}, {"later@dest.test", ""}, {"gone@dest.test", "550"}, {"gone@dest.test", "550"}, {"Ok@dest.test", ""},
	} {
		if err := send(tc.to); (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("send to %s: %v, want %q", tc.to, err, tc.want)
		}
	}
	m, err := s.Wait("Ok@dest.test", 5*time.Second)
	if err != nil || !strings.HasSuffix(string(m.Data), "body\r\n") || m.From != "bounce-md_0123456789abcdefghijklmnopq@m.test" {
		t.Fatalf("Wait = %+v, %v", m, err)
	}
	if _, err := s.Wait("later@dest.test", 100*time.Millisecond); err == nil {
		t.Error("Wait returned a message it had passed over")
	}
	if s.Count("ok@dest.test") != 1 || s.CountID("0123456789abcdef") != 2 || s.CountIDRcpt("0123456789abcdef", "LATER@dest.test") != 1 ||
		s.Delivered() != 2 || s.Connections() != 5 || len(s.Messages()) != 2 {
		t.Errorf("counters: %d %d %d %d %d %d", s.Count("ok@dest.test"), s.CountID("0123456789abcdef"),
			s.CountIDRcpt("0123456789abcdef", "LATER@dest.test"), s.Delivered(), s.Connections(), len(s.Messages()))
	}
	if a := FreeAddr(t); !strings.HasPrefix(a, "127.0.0.1:") {
		t.Errorf("FreeAddr = %q", a)
	}
}
