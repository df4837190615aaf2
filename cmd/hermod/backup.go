package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hermod-mta/hermod/internal/atomicfile"
	"github.com/hermod-mta/hermod/queue"
)

// backup writes the running daemon's backup archive to -o FILE: streamed to
// FILE.partial (0600), synced, read back whole (it must end with its
// manifest), then renamed. An existing FILE is never overwritten.
func (c *cli) backup(args []string) error {
	fs, path := c.flags("backup")
	out := fs.String("o", "", "archive file to write (required; must not exist)")
	secrets := fs.Bool("secrets", false, "also include the secret files (API token, VERP secret, DKIM key, webhook secrets, TLS key)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *out == "" || len(pos) > 0 {
		return usageError("usage: hermod backup -o FILE [-secrets] [-config FILE]")
	}
	if _, err := os.Lstat(*out); err == nil {
		return fmt.Errorf("backup: %s exists; choose another file", *out)
	}
	cl, err := c.client(*path)
	if err != nil {
		return err
	}
	tmp := *out + ".partial"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer os.Remove(tmp) // a no-op once renamed
	err = cl.Backup(context.Background(), f, *secrets)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	rf, err := os.Open(tmp)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	man, err := queue.VerifyBackup(rf)
	rf.Close()
	if err != nil {
		return fmt.Errorf("backup: the archive received is not complete: %w", err)
	}
	if err := os.Rename(tmp, *out); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(*out)); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(c.stdout, "wrote %s: %d messages, %d body files, %d secret files, store %d bytes, taken %s\n",
		*out, man.Messages, man.BodyFiles, len(man.Secrets), man.StoreSize, man.Created.Format("2006-01-02T15:04:05Z"))
	return nil
}

// restore unpacks an archive into -data-dir DIR, offline (no daemon needed;
// DIR must be absent or empty), and checks the restored store.
func (c *cli) restore(args []string) error {
	fset, _ := c.flags("restore")
	dir := fset.String("data-dir", "", "directory to restore into (required; absent or empty)")
	pos, err := parse(fset, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *dir == "" {
		return usageError("usage: hermod restore FILE -data-dir DIR")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	man, rep, err := queue.Restore(f, *dir)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(c.stdout, "restored %s into %s: %d messages, %d recipients, %d body files, %d secret files (backup taken %s)\n",
		pos[0], *dir, rep.Messages, rep.Recipients, man.BodyFiles, len(man.Secrets), man.Created.Format("2006-01-02T15:04:05Z"))
	for _, p := range rep.Problems {
		fmt.Fprintln(c.stdout, "problem:", p)
	}
	if len(rep.Problems) > 0 {
		return errStoreProblems
	}
	fmt.Fprintf(c.stdout, "ok; set data_dir = %q in the configuration and start hermod\n", *dir)
	return nil
}
