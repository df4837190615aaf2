package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader carries "t=<unix seconds>,v1=<hex HMAC-SHA256>" on every POST.
const SignatureHeader = "X-Hermod-Signature"

// DeliveryHeader carries the id of the batch. A retry of the same entries
// carries the same id, so receivers can drop a batch they already processed
// (delivery is at least once: a lost 2xx means the batch is sent again).
const DeliveryHeader = "X-Hermod-Delivery"

// DefaultTolerance is the timestamp window Verify uses when given zero.
const DefaultTolerance = 5 * time.Minute

// Errors returned by Verify.
var (
	// ErrMalformedSignature: the header has no usable t= or v1= part.
	ErrMalformedSignature = errors.New("webhook: malformed signature header")
	// ErrSignatureMismatch: no v1= value matches the body and secret.
	ErrSignatureMismatch = errors.New("webhook: signature mismatch")
	// ErrStaleTimestamp: t= is further from now than the tolerance (replay).
	ErrStaleTimestamp = errors.New("webhook: timestamp outside tolerance")
)

// Sign returns the hex HMAC-SHA256 with secret over "<timestamp>.<body>".
func Sign(secret []byte, timestamp int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(timestamp, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// signatureHeader builds the X-Hermod-Signature value.
func signatureHeader(secret []byte, timestamp int64, body []byte) string {
	return "t=" + strconv.FormatInt(timestamp, 10) + ",v1=" + Sign(secret, timestamp, body)
}

// Verify checks an X-Hermod-Signature header value against body and secret,
// for receivers and tests. Any of several v1= values may match (a sender in
// the middle of a secret rotation). A timestamp further than tolerance from
// now, in either direction, is refused; zero tolerance means
// DefaultTolerance. The error wraps ErrMalformedSignature,
// ErrSignatureMismatch or ErrStaleTimestamp.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var (
		ts     int64
		haveTS bool
		sigs   [][]byte
	)
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%w: timestamp %q", ErrMalformedSignature, v)
			}
			ts, haveTS = n, true
		case "v1":
			b, err := hex.DecodeString(v)
			if err != nil {
				return fmt.Errorf("%w: v1 is not hex", ErrMalformedSignature)
			}
			sigs = append(sigs, b)
		}
	}
	if !haveTS || len(sigs) == 0 {
		return fmt.Errorf("%w: want t=…,v1=…", ErrMalformedSignature)
	}
	want, _ := hex.DecodeString(Sign(secret, ts, body))
	matched := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			matched = true
		}
	}
	if !matched {
		return ErrSignatureMismatch
	}
	// Checked after the HMAC so that an attacker learns nothing about the
	// clock from a forged request.
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: %s off", ErrStaleTimestamp, d.Round(time.Second))
	}
	return nil
}
