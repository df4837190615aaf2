// Package fsperm refuses to run on files other users could read or change,
// as sshd does with StrictModes: hermod's data directory must not be
// writable by group or others, and each secret file (API token, VERP
// secret, DKIM keys, webhook secrets, TLS key, the store holding customer
// DKIM keys) must be a regular file readable and writable by its owner
// only, owned by the user hermod runs as (or root). The daemon calls it
// before it opens or creates anything; every problem found is reported at
// once, naming the path, its mode and the command that fixes it.
package fsperm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Dir is a directory that must not be writable by group or others.
type Dir struct {
	// Path is the directory; a missing one is fine (hermod creates it 0700).
	Path string
	// What names it for the operator, e.g. "data_dir".
	What string
}

// Secret is a file that must be private to hermod's user.
type Secret struct {
	// Path is the file; "" and a missing file are fine (hermod creates it
	// 0600, or the configuration does not use it).
	Path string
	// What names it for the operator: the configuration key, e.g.
	// "api.token_file".
	What string
}

// Checker checks directories and secret files against one user.
type Checker struct {
	// UID is the user hermod runs as. Files and directories must be owned
	// by it or by root (uid 0), who could change them anyway.
	UID int
}

// Check is Checker{UID: os.Geteuid()}.Check.
func Check(dirs []Dir, secrets []Secret) error {
	return Checker{UID: os.Geteuid()}.Check(dirs, secrets)
}

// Check stats each directory and secret file (following symbolic links, so
// a link is judged by what it points to) and returns one error listing
// every problem, or nil. A path that does not exist is not a problem; one
// that cannot be examined is.
func (c Checker) Check(dirs []Dir, secrets []Secret) error {
	var errs []error
	for _, d := range dirs {
		if err := c.checkDir(d); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range secrets {
		if err := c.checkSecret(s); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("unsafe file permissions, refusing to start: %w", errors.Join(errs...))
}

func (c Checker) checkDir(d Dir) error {
	if d.Path == "" {
		return nil
	}
	fi, err := os.Stat(d.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", d.What, d.Path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a directory (mode %s)", d.What, d.Path, fi.Mode())
	}
	if err := c.checkOwner(d.What, d.Path, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %04o (%s): other users can write to it and so replace the store and the keys in it; run: chmod 700 %s",
			d.What, d.Path, perm|modeBits(fi.Mode()), fi.Mode(), d.Path)
	}
	return nil
}

func (c Checker) checkSecret(s Secret) error {
	if s.Path == "" {
		return nil
	}
	fi, err := os.Stat(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", s.What, s.Path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file (mode %s)", s.What, s.Path, fi.Mode())
	}
	if err := c.checkOwner(s.What, s.Path, fi); err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s %s has mode %04o (%s): a secret must be readable and writable by its owner only; run: chmod 600 %s (and replace the secret if others may have read it)",
			s.What, s.Path, perm, fi.Mode(), s.Path)
	}
	return nil
}

// checkOwner refuses a file owned by neither c.UID nor root: its owner could
// have planted it, or could change it.
func (c Checker) checkOwner(what, path string, fi fs.FileInfo) error {
	uid, ok := owner(fi)
	if !ok || uid == c.UID || uid == 0 {
		return nil
	}
	return fmt.Errorf("%s %s is owned by uid %d, not by uid %d that hermod runs as: another user could have planted or changed it; if it is hermod's, run: chown %d %s",
		what, path, uid, c.UID, c.UID, path)
}

// modeBits returns the setuid, setgid and sticky bits of m in the 07000
// positions of a numeric mode.
func modeBits(m fs.FileMode) fs.FileMode {
	var b fs.FileMode
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}
