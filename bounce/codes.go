package bounce

import "strings"

// normEnhanced returns e if it is a well-formed RFC 3463 enhanced status
// code ("5.1.1", class 2, 4 or 5), else the first one found inside e, else "".
func normEnhanced(e string) string {
	e = strings.TrimSpace(e)
	if e == "" {
		return ""
	}
	return scanEnhanced(e)
}

// replyCodes recovers the reply code and enhanced status code from the
// start of a diagnostic ("smtp; 550-5.1.1 …", "#550 5.1.1 …",
// "<<< 554 …", "554: delivery error"). Only 4xx and 5xx codes are returned,
// because a 2xx line in a transcript says nothing about the failure.
func replyCodes(text string) (code int, enhanced string) {
	return scanCode(text), scanEnhanced(text)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isAlnum(c byte) bool {
	return isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// scanCode finds the first standalone 4xx or 5xx number followed by a
// space, '-', ':' or the end of text.
func scanCode(t string) int {
	for i := 0; i+3 <= len(t); i++ {
		c := t[i]
		if c != '4' && c != '5' {
			continue
		}
		if i > 0 && (isAlnum(t[i-1]) || t[i-1] == '.' || t[i-1] == '-' || t[i-1] == '_' || t[i-1] == '/' || t[i-1] == '=') {
			continue
		}
		if !isDigit(t[i+1]) || !isDigit(t[i+2]) {
			continue
		}
		if i+3 < len(t) {
			n := t[i+3]
			if n != ' ' && n != '-' && n != ':' && n != '\t' && n != '\n' && n != '\r' {
				continue
			}
		}
		return int(c-'0')*100 + int(t[i+1]-'0')*10 + int(t[i+2]-'0')
	}
	return 0
}

// scanEnhanced finds the first RFC 3463 code "c.sss.ddd" (c in 2, 4, 5) that
// is not part of a longer dotted number such as an IP address.
func scanEnhanced(t string) string {
	for i := 0; i+5 <= len(t); i++ {
		c := t[i]
		if c != '2' && c != '4' && c != '5' {
			continue
		}
		if i > 0 && (isAlnum(t[i-1]) || t[i-1] == '.') {
			continue
		}
		if t[i+1] != '.' {
			continue
		}
		j := i + 2
		n1 := digits(t, j)
		if n1 == 0 || n1 > 3 || j+n1 >= len(t) || t[j+n1] != '.' {
			continue
		}
		k := j + n1 + 1
		n2 := digits(t, k)
		if n2 == 0 || n2 > 3 {
			continue
		}
		end := k + n2
		if end < len(t) && (isAlnum(t[end]) || (t[end] == '.' && end+1 < len(t) && isDigit(t[end+1]))) {
			continue
		}
		return t[i:end]
	}
	return ""
}

func digits(t string, i int) int {
	n := 0
	for i+n < len(t) && isDigit(t[i+n]) {
		n++
	}
	return n
}
