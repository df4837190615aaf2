// Command testdns is a tiny authoritative DNS server for the end-to-end test
// (scripts/e2e.sh). It serves UDP and TCP on one loopback address and answers
// from a zone file that it re-reads on every query, so a test can publish
// records by appending lines to the file.
//
// Zone file: one record per line, "name TYPE value"; blank lines and lines
// starting with # or ; are ignored. Names are absolute or made absolute;
// matching is case-insensitive. Supported types: A, AAAA, CNAME, MX
// ("pref host"), TXT (the value, optionally in double quotes; long values are
// split into 255-byte character strings). Every answer has TTL 0. A name with
// no records at all is NXDOMAIN; a known name without records of the asked
// type answers its CNAME if it has one, else NOERROR with no answer.
//
// Usage: testdns -listen 127.0.0.1:PORT -zone FILE
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/miekg/dns"
)

type record struct {
	name  string // lower-case FQDN
	typ   uint16
	value string
}

func readZone(path string) ([]record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	ln := 0
	for sc.Scan() {
		ln++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 {
			return nil, fmt.Errorf("%s:%d: want \"name TYPE value\"", path, ln)
		}
		typ, ok := dns.StringToType[strings.ToUpper(fields[1])]
		if !ok {
			return nil, fmt.Errorf("%s:%d: unknown type %q", path, ln, fields[1])
		}
		// The value is the rest of the line after name and type, verbatim.
		rest := strings.TrimSpace(line[strings.Index(line, fields[0])+len(fields[0]):])
		rest = strings.TrimSpace(rest[len(fields[1]):])
		out = append(out, record{name: strings.ToLower(dns.Fqdn(fields[0])), typ: typ, value: rest})
	}
	return out, sc.Err()
}

// splitTXT cuts s into character strings of at most 255 bytes.
func splitTXT(s string) []string {
	var parts []string
	for len(s) > 255 {
		parts = append(parts, s[:255])
		s = s[255:]
	}
	return append(parts, s)
}

// txtValue is the value of a TXT line: one quoted string (quotes removed),
// several quoted strings (joined), or bare text.
func txtValue(v string) string {
	if !strings.HasPrefix(v, `"`) {
		return v
	}
	var b strings.Builder
	for v = strings.TrimSpace(v); strings.HasPrefix(v, `"`); v = strings.TrimSpace(v) {
		end := strings.Index(v[1:], `"`)
		if end < 0 {
			b.WriteString(v[1:])
			return b.String()
		}
		b.WriteString(v[1 : 1+end])
		v = v[end+2:]
	}
	return b.String()
}

func makeRR(r record) (dns.RR, error) {
	hdr := dns.RR_Header{Name: r.name, Rrtype: r.typ, Class: dns.ClassINET, Ttl: 0}
	switch r.typ {
	case dns.TypeA, dns.TypeAAAA:
		ip := net.ParseIP(r.value)
		if ip == nil {
			return nil, fmt.Errorf("bad address %q", r.value)
		}
		if r.typ == dns.TypeA {
			return &dns.A{Hdr: hdr, A: ip.To4()}, nil
		}
		return &dns.AAAA{Hdr: hdr, AAAA: ip}, nil
	case dns.TypeCNAME:
		return &dns.CNAME{Hdr: hdr, Target: strings.ToLower(dns.Fqdn(r.value))}, nil
	case dns.TypeMX:
		f := strings.Fields(r.value)
		if len(f) != 2 {
			return nil, fmt.Errorf("MX wants \"pref host\", got %q", r.value)
		}
		pref, err := strconv.Atoi(f[0])
		if err != nil {
			return nil, err
		}
		return &dns.MX{Hdr: hdr, Preference: uint16(pref), Mx: dns.Fqdn(f[1])}, nil
	case dns.TypeTXT:
		return &dns.TXT{Hdr: hdr, Txt: splitTXT(txtValue(r.value))}, nil
	}
	return nil, fmt.Errorf("unsupported type %s", dns.TypeToString[r.typ])
}

func main() {
	listen := flag.String("listen", "127.0.0.1:5353", "address for UDP and TCP")
	zone := flag.String("zone", "zone.txt", "zone file, re-read on every query")
	flag.Parse()
	if _, err := readZone(*zone); err != nil && !os.IsNotExist(err) {
		log.Fatal(err)
	}

	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		q := req.Question[0]
		recs, err := readZone(*zone)
		if err != nil && !os.IsNotExist(err) {
			log.Print(err)
			m.Rcode = dns.RcodeServerFailure
			w.WriteMsg(m)
			return
		}
		name := strings.ToLower(q.Name)
		known := false
		var cname *record
		for i, r := range recs {
			if r.name != name {
				continue
			}
			known = true
			if r.typ == dns.TypeCNAME {
				cname = &recs[i]
			}
			if r.typ == q.Qtype || q.Qtype == dns.TypeANY {
				rr, err := makeRR(r)
				if err != nil {
					log.Printf("%s: %v", r.name, err)
					continue
				}
				m.Answer = append(m.Answer, rr)
			}
		}
		if len(m.Answer) == 0 && cname != nil {
			if rr, err := makeRR(*cname); err == nil {
				m.Answer = append(m.Answer, rr)
			}
		}
		if !known {
			m.Rcode = dns.RcodeNameError
		}
		log.Printf("%s %s -> %s, %d answer(s)", dns.TypeToString[q.Qtype], q.Name, dns.RcodeToString[m.Rcode], len(m.Answer))
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			// Over UDP an answer larger than the client takes is truncated
			// (TC set); the client retries over TCP.
			size := dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				size = max(int(opt.UDPSize()), dns.MinMsgSize)
			}
			m.Truncate(size)
		}
		if err := w.WriteMsg(m); err != nil {
			log.Print(err)
		}
	})

	errc := make(chan error, 2)
	servers := []*dns.Server{
		{Addr: *listen, Net: "udp", Handler: handler},
		{Addr: *listen, Net: "tcp", Handler: handler},
	}
	for _, s := range servers {
		go func(s *dns.Server) { errc <- s.ListenAndServe() }(s)
	}
	log.Printf("testdns: serving %s (udp+tcp) from %s", *listen, *zone)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errc:
		log.Fatal(err)
	case <-sigs:
		for _, s := range servers {
			s.Shutdown()
		}
	}
}
