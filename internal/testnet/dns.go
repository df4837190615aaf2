package testnet

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DNS is an authoritative-looking DNS server on 127.0.0.1, UDP and TCP on
// the same port, answering from records set at run time. A query for a
// type the name lacks is answered with the name's CNAME records if it has
// any, else NODATA; a name without records gets NXDOMAIN. Negative answers
// carry an SOA whose MINIMUM is the negative TTL (60 unless
// SetNegativeTTL changes it). Names are compared without case.
type DNS struct {
	t    testing.TB
	addr string

	mu       sync.Mutex
	records  map[string]map[uint16][]dns.RR // name. → type → records
	servfail map[string]bool
	timeout  map[string]bool
	truncate map[string]bool
	queries  map[qkey]int
	tcp      int
	negTTL   uint32
}

type qkey struct {
	name  string
	qtype uint16
}

// NewDNS starts a server on a loopback port free for both UDP and TCP and
// stops it when the test ends. It fails the test if no such port is found.
func NewDNS(t testing.TB) *DNS {
	t.Helper()
	s := &DNS{
		t:        t,
		records:  map[string]map[uint16][]dns.RR{},
		servfail: map[string]bool{},
		timeout:  map[string]bool{},
		truncate: map[string]bool{},
		queries:  map[qkey]int{},
		negTTL:   60,
	}
	var (
		pc net.PacketConn
		l  net.Listener
	)
	for i := 0; i < 20 && l == nil; i++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			l = nil
		}
	}
	if l == nil {
		t.Fatal("testnet: no UDP+TCP port pair free")
	}
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: l, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return s
}

// Addr returns the server's host:port, the same for UDP and TCP.
func (s *DNS) Addr() string { return s.addr }

func fqdn(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// Add adds records in zone-file syntax, e.g.
// "example.test. 300 IN MX 10 mx.example.test.". A record that does not
// parse fails the test given to NewDNS.
func (s *DNS) Add(rr ...string) {
	s.t.Helper()
	parsed := make([]dns.RR, 0, len(rr))
	for _, txt := range rr {
		r, err := dns.NewRR(txt)
		if err != nil || r == nil {
			s.t.Fatalf("testnet: bad RR %q: %v", txt, err)
		}
		parsed = append(parsed, r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range parsed {
		name := fqdn(r.Header().Name)
		if s.records[name] == nil {
			s.records[name] = map[uint16][]dns.RR{}
		}
		s.records[name][r.Header().Rrtype] = append(s.records[name][r.Header().Rrtype], r)
	}
}

// Set replaces the records of type qtype at name with rrs, served as
// given (owner name, case and TTL included); no rrs removes that type.
func (s *DNS) Set(name string, qtype uint16, rrs ...dns.RR) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = fqdn(name)
	if len(rrs) == 0 {
		delete(s.records[name], qtype)
		if len(s.records[name]) == 0 {
			delete(s.records, name)
		}
		return
	}
	if s.records[name] == nil {
		s.records[name] = map[uint16][]dns.RR{}
	}
	s.records[name][qtype] = append([]dns.RR(nil), rrs...)
}

// Remove removes every record at name, which then does not exist.
func (s *DNS) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, fqdn(name))
}

func (s *DNS) flag(m map[string]bool, name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		m[fqdn(name)] = true
	} else {
		delete(m, fqdn(name))
	}
}

// ServFail makes every query for name answer SERVFAIL (on) or not.
func (s *DNS) ServFail(name string, on bool) { s.flag(s.servfail, name, on) }

// Timeout makes the server never answer queries for name (on), so that
// clients time out, or answer them again.
func (s *DNS) Timeout(name string, on bool) { s.flag(s.timeout, name, on) }

// Truncate makes UDP answers for name empty with the TC bit set (on), so
// that clients retry over TCP, where the full answer is given.
func (s *DNS) Truncate(name string, on bool) { s.flag(s.truncate, name, on) }

// SetNegativeTTL sets the SOA MINIMUM of NXDOMAIN and NODATA answers (RFC
// 2308 5); 0 leaves the SOA out, so that resolvers cache no negative
// answer.
func (s *DNS) SetNegativeTTL(seconds uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.negTTL = seconds
}

// Queries returns how many queries for name and qtype the server has
// received, over UDP and TCP, answered or not.
func (s *DNS) Queries(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[qkey{fqdn(name), qtype}]
}

// TCPQueries returns how many queries arrived over TCP.
func (s *DNS) TCPQueries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcp
}

// ServeDNS answers one query; it implements dns.Handler.
func (s *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	isTCP := w.LocalAddr().Network() == "tcp"

	s.mu.Lock()
	s.queries[qkey{name, q.Qtype}]++
	if isTCP {
		s.tcp++
	}
	timeout, servfail, trunc := s.timeout[name], s.servfail[name], s.truncate[name]
	recs, exists := s.records[name]
	answer := append([]dns.RR(nil), recs[q.Qtype]...)
	if len(answer) == 0 && q.Qtype != dns.TypeCNAME {
		answer = append(answer, recs[dns.TypeCNAME]...)
	}
	negTTL := s.negTTL
	s.mu.Unlock()

	if timeout {
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	switch {
	case servfail:
		m.Rcode = dns.RcodeServerFailure
	case trunc && !isTCP:
		m.Truncated = true
	case len(answer) > 0:
		m.Answer = answer
	default:
		if !exists {
			m.Rcode = dns.RcodeNameError
		}
		if negTTL > 0 {
			soa, _ := dns.NewRR("test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 " + strconv.FormatUint(uint64(negTTL), 10))
			m.Ns = []dns.RR{soa}
		}
	}
	_ = w.WriteMsg(m)
}
