// Package atomicfile creates the small secret files hermod generates on
// first start (VERP secret, DKIM keys, API and webhook tokens): mode 0600 in
// a 0700 directory, durable, and never replacing a file another process
// created at the same moment.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Create writes data to path unless path already exists. The content goes
// to a temporary file that is synced and then linked into place: a link,
// unlike a rename, fails when path exists, so a secret someone else stored
// meanwhile (and may already use or have published) is never replaced. On
// file systems without hard links it falls back to a rename. created is
// false, with a nil error, when path existed: the caller reads that file.
func Create(path string, data []byte) (created bool, err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return false, fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a link this removes the extra name
	// CreateTemp already uses 0600; Chmod makes it independent of that detail.
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("write temporary file: %w", err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		if err := os.Rename(tmp, path); err != nil {
			return false, fmt.Errorf("install %s: %w", path, err)
		}
	}
	_ = SyncDir(dir) // the secret is usable already; some systems cannot fsync directories
	return true, nil
}

// SyncDir makes new directory entries in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
