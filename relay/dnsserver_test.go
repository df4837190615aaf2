package relay

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// dnsServer is an authoritative-looking test server on 127.0.0.1 (UDP and
// TCP on the same port) answering from a record map.
type dnsServer struct {
	addr string

	mu       sync.Mutex
	records  map[string][]dns.RR // "name./TYPE"
	names    map[string]bool     // names that exist (have any record)
	servfail map[string]bool     // name -> SERVFAIL
	drop     map[string]bool     // name -> never answer
	truncate map[string]bool     // name -> UDP answers are truncated
	queries  map[string]int      // "name./TYPE" -> queries seen (UDP and TCP)
	tcp      int                 // queries seen over TCP
	soaMin   uint32              // SOA MINIMUM in negative answers
}

func newDNSServer(t testing.TB) *dnsServer {
	t.Helper()
	s := &dnsServer{
		records:  make(map[string][]dns.RR),
		names:    make(map[string]bool),
		servfail: make(map[string]bool),
		drop:     make(map[string]bool),
		truncate: make(map[string]bool),
		queries:  make(map[string]int),
		soaMin:   60,
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
		t.Fatal("no UDP+TCP port pair free")
	}
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: l, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return s
}

// add adds records in zone-file syntax, e.g. "example.test. 300 IN MX 10 mx.example.test.".
func (s *dnsServer) add(t testing.TB, rrs ...string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, txt := range rrs {
		rr, err := dns.NewRR(txt)
		if err != nil {
			t.Fatalf("bad RR %q: %v", txt, err)
		}
		name := strings.ToLower(rr.Header().Name)
		key := name + "/" + dns.TypeToString[rr.Header().Rrtype]
		s.records[key] = append(s.records[key], rr)
		s.names[name] = true
	}
}

func (s *dnsServer) set(m map[string]bool, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m[dns.Fqdn(strings.ToLower(name))] = true
}

// count returns how many queries for name/qtype the server has seen.
func (s *dnsServer) count(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries[dns.Fqdn(strings.ToLower(name))+"/"+dns.TypeToString[qtype]]
}

func (s *dnsServer) tcpCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcp
}

func (s *dnsServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	key := name + "/" + dns.TypeToString[q.Qtype]
	isTCP := w.LocalAddr().Network() == "tcp"

	s.mu.Lock()
	s.queries[key]++
	if isTCP {
		s.tcp++
	}
	drop, servfail, trunc := s.drop[name], s.servfail[name], s.truncate[name]
	answer := append([]dns.RR(nil), s.records[key]...)
	if len(answer) == 0 && q.Qtype != dns.TypeCNAME {
		answer = append(answer, s.records[name+"/CNAME"]...)
	}
	exists := s.names[name]
	soaMin := s.soaMin
	s.mu.Unlock()

	if drop {
		return // the client times out
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
		soa, _ := dns.NewRR("test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 " + strconv.Itoa(int(soaMin)))
		m.Ns = []dns.RR{soa}
	}
	_ = w.WriteMsg(m)
}
