package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads the file at path and returns it parsed, defaulted and validated
// (see [Parse]), with Path set. A file that does not exist gives an error
// wrapping [ErrNoConfig] (and the fs.ErrNotExist from the read); an invalid one
// gives *Error values as Parse does; any other read failure is returned wrapped.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", ErrNoConfig, err)
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	// A relative data_dir is taken from the file's directory, so that the
	// daemon and the CLI find the same one wherever they are started from;
	// it is resolved before validation, which looks at files in it.
	return parse(data, path, filepath.Dir(path))
}

// Parse decodes data strictly, applies the defaults to every zero value and
// validates the result. path only names the file in errors and in Config.Path
// ("" for the embedded example).
//
// Errors are *Error, or errors.Join of several: a TOML syntax error; a value
// of the wrong type or a malformed duration (Key and Line set); every key that
// hermod does not know (the match is exact, so "Hostname" is refused too); or
// what [Config.Validate] reports, with the line of the key filled in where the
// key appears in the file.
func Parse(data []byte, path string) (*Config, error) {
	return parse(data, path, ".")
}

// parse is Parse, taking a relative data_dir from base.
func parse(data []byte, path, base string) (*Config, error) {
	text := string(data)
	lines := indexLines(text)
	// fix sets File and Line and orders the errors as in the file, those
	// about keys that are not in the file last.
	fix := func(err error) error {
		errs := errList(asErrors(err))
		for _, e := range errs {
			e.File = path
			if e.Line == 0 && e.Key != "" {
				e.Line = lines.find(e.Key)
			}
		}
		sort.SliceStable(errs, func(i, j int) bool {
			li, lj := errs[i].Line, errs[j].Line
			return li != 0 && (lj == 0 || li < lj)
		})
		return errs.err()
	}

	// Syntax first, into a generic map, so that syntax errors are not
	// mistaken for errors about the last key the parser saw.
	var generic map[string]any
	if _, err := toml.Decode(text, &generic); err != nil {
		return nil, fix(translate(err, false))
	}

	c := new(Config)
	md, err := toml.Decode(text, c)
	if err != nil {
		return nil, fix(translate(err, true))
	}
	if err := unknownKeys(md); err != nil {
		return nil, fix(err)
	}
	c.Path = path
	c.applyDefaults()
	if !md.IsDefined("relay", "delay_warning") {
		c.Relay.DelayWarning = DefaultDelayWarning // "0" is explicit: disabled
	}
	if base != "." && base != "" && !filepath.IsAbs(c.DataDir) {
		c.DataDir = filepath.Join(base, c.DataDir)
	}
	if err := c.Validate(); err != nil {
		return nil, fix(err)
	}
	return c, nil
}

// asErrors lists the *Error values in err, which is nil, an *Error or a join.
func asErrors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// The toml package reports type mismatches as plain errors of this form.
var (
	plainErrRE = regexp.MustCompile(`^toml: (?:line (\d+) )?\(last key "(.*)"\): (.*)$`)
	typeErrRE  = regexp.MustCompile(`^incompatible types: TOML value has type (.+); destination has type (.+)$`)
)

// translate turns an error from toml.Decode into an *Error. keyed says the
// error comes from decoding into Config, where LastKey is the key at fault.
func translate(err error, keyed bool) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		e := &Error{Line: pe.Position.Line, Msg: pe.Message}
		if keyed {
			e.Key = pe.LastKey
		}
		if strings.HasPrefix(pe.Message, "invalid duration") {
			e.Msg += `: use a Go duration such as "30s", "5m" or "72h"`
		}
		return e
	}
	if m := plainErrRE.FindStringSubmatch(err.Error()); m != nil {
		e := &Error{Key: m[2], Msg: m[3]}
		e.Line, _ = strconv.Atoi(m[1])
		if t := typeErrRE.FindStringSubmatch(m[3]); t != nil {
			e.Msg = fmt.Sprintf("wrong type: got %s, want %s", tomlTypeName(t[1]), tomlTypeName(t[2]))
		} else if strings.HasPrefix(m[3], "type mismatch for ") {
			// "type mismatch for struct {…}: expected table but found int64"
			msg := m[3][strings.LastIndex(m[3], ": ")+2:]
			e.Msg = "wrong type: " + strings.NewReplacer("int64", "integer", "float64", "float").Replace(msg)
		}
		return e
	}
	return &Error{Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

func tomlTypeName(t string) string {
	switch t {
	case "int64", "integer":
		return "an integer"
	case "float64", "float":
		return "a float"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "map[string]any", "map[string]interface {}", "map":
		return "a table"
	case "[]map[string]any", "[]map[string]interface {}":
		return "an array of tables"
	case "[]any", "[]interface {}", "slice", "array":
		return "an array"
	case "time.Time":
		return "a datetime"
	}
	return t
}

// knownKey describes one key hermod accepts.
type knownKey struct {
	open bool // a map: any key below it is accepted here (Validate checks them)
}

// knownKeys is every key path of Config, from its toml tags, without array
// indices ("submission.users.name").
var knownKeys = func() map[string]knownKey {
	m := map[string]knownKey{}
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for f := range t.Fields() {
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			key := tag
			if prefix != "" {
				key = prefix + "." + tag
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer { // an optional table ([cluster])
				ft = ft.Elem()
			}
			m[key] = knownKey{open: ft.Kind() == reflect.Map}
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
				walk(key, ft)
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	return m
}()

// unknownKeys reports every key in the file that is not a Config key, matching
// exactly (the toml package would match "Hostname" to hostname silently).
func unknownKeys(md toml.MetaData) error {
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	var errs errList
	reported := map[string]bool{}
keys:
	for _, k := range md.Keys() {
		ks := k.String()
		if reported[ks] {
			continue
		}
		for i := len(k) - 1; i > 0; i-- {
			parent := k[:i].String()
			if reported[parent] {
				continue keys // already said its table is unknown
			}
			if knownKeys[parent].open {
				continue keys
			}
		}
		if _, ok := knownKeys[ks]; ok && !undecoded[ks] {
			continue
		}
		reported[ks] = true
		msg := "unknown key"
		if s := suggest(k); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		errs.add(ks, "%s", msg)
	}
	return errs.err()
}

// suggest returns the known sibling of k closest to it, or "".
func suggest(k toml.Key) string {
	parent := k[:len(k)-1].String()
	last := k[len(k)-1]
	var cands []string
	for known := range knownKeys {
		p, name := "", known
		if i := strings.LastIndexByte(known, '.'); i >= 0 {
			p, name = known[:i], known[i+1:]
		}
		if p != parent {
			continue
		}
		if strings.EqualFold(name, last) || editDistance(strings.ToLower(name), strings.ToLower(last)) <= 2 {
			cands = append(cands, name)
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		return editDistance(cands[i], last) < editDistance(cands[j], last)
	})
	if len(cands) == 0 {
		return ""
	}
	if parent == "" {
		return cands[0]
	}
	return parent + "." + cands[0]
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// lineIndex maps key paths to the line (from 1) where they are set or where
// their table starts. The toml package keeps positions to itself, so this is
// a small best-effort scanner: it understands tables, arrays of tables, dotted
// and quoted keys, multi-line arrays and multi-line strings.
type lineIndex struct {
	exact map[string]int // with indices: "submission.users[1].name"
	plain map[string]int // without, first occurrence: "submission.users.name"
}

var indexRE = regexp.MustCompile(`\[\d+\]`)

// find returns the line of key, 0 if unknown. An indexed key that is not in
// the file (a key missing from an array element) gives the line of its element.
func (x lineIndex) find(key string) int {
	if n, ok := x.exact[key]; ok {
		return n
	}
	if !strings.Contains(key, "[") {
		return x.plain[key]
	}
	for k := key; ; {
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
		if n, ok := x.exact[k]; ok && strings.HasSuffix(k, "]") {
			return n
		}
	}
	return x.plain[indexRE.ReplaceAllString(key, "")]
}

func indexLines(text string) lineIndex {
	x := lineIndex{exact: map[string]int{}, plain: map[string]int{}}
	record := func(exact string, n int) {
		if _, ok := x.exact[exact]; !ok {
			x.exact[exact] = n
		}
		plain := indexRE.ReplaceAllString(exact, "")
		if _, ok := x.plain[plain]; !ok {
			x.plain[plain] = n
		}
	}
	var (
		table     string             // current table, with indices
		counts    = map[string]int{} // elements seen per array of tables
		depth     int                // open [ or { of a multi-line value
		multiline string             // closing delimiter of an open multi-line string
	)
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		if multiline != "" {
			if strings.Contains(line, multiline) {
				multiline = ""
			}
			continue
		}
		if depth > 0 {
			depth, multiline = scanValue(line, depth)
			continue
		}
		s := strings.TrimSpace(line)
		switch {
		case s == "" || s[0] == '#':
		case strings.HasPrefix(s, "[["):
			end := strings.Index(s, "]]")
			if end < 0 {
				continue
			}
			name := normalizeKey(s[2:end])
			table = fmt.Sprintf("%s[%d]", name, counts[name])
			counts[name]++
			record(table, n)
		case s[0] == '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				continue
			}
			table = normalizeKey(s[1:end])
			record(table, n)
		default:
			eq := indexOutsideQuotes(s, '=')
			if eq < 0 {
				continue
			}
			key := normalizeKey(s[:eq])
			if table != "" {
				key = table + "." + key
			}
			record(key, n)
			depth, multiline = scanValue(s[eq+1:], 0)
		}
	}
	return x
}

// scanValue follows brackets and strings through one line of a value and
// returns the bracket depth at its end and the delimiter of a multi-line
// string left open.
func scanValue(s string, depth int) (int, string) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '#':
			return depth, ""
		case '[', '{':
			depth++
		case ']', '}':
			if depth > 0 {
				depth--
			}
		case '"', '\'':
			if strings.HasPrefix(s[i:], `"""`) || strings.HasPrefix(s[i:], "'''") {
				delim := s[i : i+3]
				end := strings.Index(s[i+3:], delim)
				if end < 0 {
					return depth, delim
				}
				i += 3 + end + 2
				continue
			}
			for i++; i < len(s) && s[i] != c; i++ {
				if c == '"' && s[i] == '\\' {
					i++
				}
			}
		}
	}
	return depth, ""
}

func indexOutsideQuotes(s string, want byte) int {
	var quote byte
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == want:
			return i
		}
	}
	return -1
}

// normalizeKey turns ` a . "b.c" ` into the form toml.Key.String gives.
func normalizeKey(s string) string {
	var parts []string
	for s = strings.TrimSpace(s); s != ""; {
		dot := indexOutsideQuotes(s, '.')
		part := s
		if dot >= 0 {
			part, s = s[:dot], s[dot+1:]
		} else {
			s = ""
		}
		part = strings.TrimSpace(part)
		if len(part) >= 2 && (part[0] == '"' || part[0] == '\'') && part[len(part)-1] == part[0] {
			part = part[1 : len(part)-1]
		}
		parts = append(parts, part)
	}
	return toml.Key(parts).String()
}
