package cluster

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Sealer encrypts the values of secret buckets (control.BucketSpec.Secret)
// before they are written to etcd, and decrypts them when they are read
// back. The bucket and key are bound to the sealed value, so a value cannot
// be moved to another key.
type Sealer interface {
	Seal(bucket string, key, plain []byte) ([]byte, error)
	Open(bucket string, key, sealed []byte) ([]byte, error)
}

// sealVersion is the first byte of every sealed value.
const sealVersion = 1

// AESSealer is a Sealer with AES-256-GCM. A sealed value is a version byte,
// a random 12-byte nonce and the GCM ciphertext of the value, with the
// bucket and key as additional data.
type AESSealer struct {
	aead cipher.AEAD
}

// NewSealer derives an AES-256-GCM key from the cluster secret with
// HMAC-SHA256(secret, "hermod-control-seal-v1").
func NewSealer(secret []byte) (*AESSealer, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("cluster: sealer: the secret is %d bytes, want at least 16", len(secret))
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("hermod-control-seal-v1"))
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("cluster: sealer: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("cluster: sealer: %w", err)
	}
	return &AESSealer{aead: aead}, nil
}

// additional is the GCM additional data of a value: the bucket's length,
// the bucket and the key.
func additional(bucket string, key []byte) []byte {
	ad := make([]byte, 4, 4+len(bucket)+len(key))
	binary.BigEndian.PutUint32(ad, uint32(len(bucket)))
	ad = append(ad, bucket...)
	return append(ad, key...)
}

// Seal implements Sealer.
func (s *AESSealer) Seal(bucket string, key, plain []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plain)+s.aead.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1 : 1+ns]); err != nil {
		return nil, fmt.Errorf("cluster: seal: nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:1+ns], plain, additional(bucket, key)), nil
}

// errSealed is returned for a sealed value that does not open.
var errSealed = errors.New("sealed value does not open (another cluster secret, or moved from another key)")

// Open implements Sealer.
func (s *AESSealer) Open(bucket string, key, sealed []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(sealed) < 1+ns+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, fmt.Errorf("cluster: open %s/%x: not a sealed value", bucket, key)
	}
	plain, err := s.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], additional(bucket, key))
	if err != nil {
		return nil, fmt.Errorf("cluster: open %s/%x: %w", bucket, key, errSealed)
	}
	return plain, nil
}
