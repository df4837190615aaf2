package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/hermod-mta/hermod/internal/atomicfile"
)

// LoadOrCreateToken returns the API bearer token stored in path, creating
// the file (mode 0600, directory 0700) with a random token if it is absent.
func LoadOrCreateToken(path string) (string, error) {
	if tok, err := ReadToken(path); err == nil {
		return tok, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b[:])
	created, err := atomicfile.Create(path, []byte(tok+"\n"))
	if err != nil {
		return "", fmt.Errorf("store token: %w", err)
	}
	if !created { // created meanwhile by another process
		return ReadToken(path)
	}
	return tok, nil
}

// ReadToken reads the API token from path.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("token file %s holds no usable token (at least 16 characters)", path)
	}
	return tok, nil
}
