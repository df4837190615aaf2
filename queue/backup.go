package queue

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hermod-mta/hermod/internal/atomicfile"

	bolt "go.etcd.io/bbolt"
)

// A backup is a tar archive: the store file as one bbolt read transaction
// saw it ("hermod.db"), then the body file of every message that transaction
// refers to ("bodies/<id>"), then the requested secret files (under their
// path relative to the data directory), and last a manifest
// (BackupManifestName) that restore requires, so that a truncated archive is
// refused rather than half restored. While a backup runs, body files of
// messages deleted meanwhile are kept until it ends (removeBodyFiles), so
// every file the snapshot refers to can still be read; submissions and
// deliveries go on.

// BackupManifestName is the last entry of every backup archive.
const BackupManifestName = "hermod-backup.json"

// backupStoreName is the store file's name inside the archive and the data directory.
const backupStoreName = "hermod.db"

// BackupOptions says what a backup carries besides the store and bodies.
type BackupOptions struct {
	// Secrets maps a path relative to the data directory (slash-separated,
	// as it will be restored) to the file to read. Nil: no secrets.
	Secrets map[string]string
}

// BackupManifest describes an archive; it is its last entry.
type BackupManifest struct {
	Version   int       `json:"version"`
	Created   time.Time `json:"created"`
	StoreSize int64     `json:"store_size"`
	Messages  int       `json:"messages"`
	BodyFiles int       `json:"body_files"`
	Secrets   []string  `json:"secrets,omitempty"`
}

// Backup writes a consistent archive of the store to w without stopping
// writers: the store through one bbolt read transaction and the body files
// that transaction refers to, then opts.Secrets. It returns the manifest it
// wrote last.
//
// The read transaction lasts only while the snapshot is copied to a
// temporary file in the data directory and the body files are hard-linked
// beside it (bbolt cannot grow its map while a read transaction is open, so
// a transaction held while a slow client reads would stall commits); the
// archive is then streamed from those copies, which are removed at the end.
// The data directory needs room for one more copy of the store meanwhile.
func (s *Store) Backup(w io.Writer, opts BackupOptions) (*BackupManifest, error) {
	names := make([]string, 0, len(opts.Secrets))
	for name := range opts.Secrets {
		if !validArchiveName(name) {
			return nil, fmt.Errorf("queue: backup: secret name %q is not a relative path inside the data directory", name)
		}
		names = append(names, name)
	}
	sort.Strings(names)
	s.mu.Lock()
	if s.backups == 0 { // copies left by a backup that a crash interrupted
		stale, _ := filepath.Glob(filepath.Join(s.dir, "backup-*.tmp"))
		for _, d := range stale {
			os.RemoveAll(d)
		}
	}
	s.backups++
	s.mu.Unlock()
	defer s.endBackup()
	snap, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(snap.dir)
	now := s.now()
	man := &BackupManifest{Version: 1, Created: now.UTC(), StoreSize: snap.size, Messages: snap.messages}
	tw := tar.NewWriter(w)
	hdr := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Size: size, Mode: 0o600, ModTime: now, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	}
	if err := addFile(tw, hdr, backupStoreName, filepath.Join(snap.dir, backupStoreName)); err != nil {
		return nil, err
	}
	for _, id := range snap.bodies {
		if err := addFile(tw, hdr, "bodies/"+id, filepath.Join(snap.dir, id)); err != nil {
			return nil, err
		}
		man.BodyFiles++
	}
	for _, name := range names {
		if err := addFile(tw, hdr, name, opts.Secrets[name]); err != nil {
			return nil, err
		}
		man.Secrets = append(man.Secrets, name)
	}
	mb, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(hdr(BackupManifestName, int64(len(mb)))); err != nil {
		return nil, fmt.Errorf("queue: backup: %w", err)
	}
	if _, err := tw.Write(mb); err != nil {
		return nil, fmt.Errorf("queue: backup: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("queue: backup: %w", err)
	}
	return man, nil
}

// snapshotDir is a backup's private copy: the store file and links to the
// body files it refers to.
type snapshotDir struct {
	dir      string
	size     int64
	messages int
	bodies   []string
}

// snapshot copies the store as one read transaction sees it, and links the
// body files it refers to, into a new directory beside the store. Body
// files deleted meanwhile are kept (removeBodyFiles: Backup counts itself
// in s.backups).
func (s *Store) snapshot() (*snapshotDir, error) {
	tmp, err := os.MkdirTemp(s.dir, "backup-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("queue: backup: %w", err)
	}
	snap := &snapshotDir{dir: tmp}
	err = s.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketMsgs).ForEach(func(k, v []byte) error {
			snap.messages++
			var m msgRecord
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("queue: backup: message %s: %w", k, err)
			}
			if m.BodyFile {
				snap.bodies = append(snap.bodies, m.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		snap.size = tx.Size()
		if err := tx.CopyFile(filepath.Join(tmp, backupStoreName), 0o600); err != nil {
			return fmt.Errorf("queue: backup: copy the store: %w", err)
		}
		return nil
	})
	if err == nil && s.afterSnapshot != nil {
		s.afterSnapshot()
	}
	if err == nil {
		for _, id := range snap.bodies {
			if err = linkOrCopy(s.bodyPath(id), filepath.Join(tmp, id)); err != nil {
				break
			}
		}
	}
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	return snap, nil
}

// linkOrCopy hard-links src to dst, or copies it where a link is not
// possible (a body_dir on another file system).
func linkOrCopy(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("queue: backup: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("queue: backup: %w", err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("queue: backup: copy %s: %w", src, err)
	}
	return nil
}

func addFile(tw *tar.Writer, hdr func(string, int64) *tar.Header, name, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("queue: backup: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("queue: backup: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("queue: backup: %s is not a regular file", file)
	}
	if err := tw.WriteHeader(hdr(name, fi.Size())); err != nil {
		return fmt.Errorf("queue: backup: %w", err)
	}
	if _, err := io.CopyN(tw, f, fi.Size()); err != nil {
		return fmt.Errorf("queue: backup: copy %s: %w", file, err)
	}
	return nil
}

// removeBodyFiles deletes the body files of committed deletions, or keeps
// them for later while a backup runs (its snapshot may refer to them).
func (s *Store) removeBodyFiles(files []string) {
	if len(files) == 0 {
		return
	}
	s.mu.Lock()
	if s.backups > 0 {
		s.keptFiles = append(s.keptFiles, files...)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.unlinkBodies(files)
}

func (s *Store) unlinkBodies(files []string) {
	for _, f := range files {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("queue: remove body file", "file", f, "err", err)
		}
	}
}

func (s *Store) endBackup() {
	s.mu.Lock()
	s.backups--
	var files []string
	if s.backups == 0 {
		files, s.keptFiles = s.keptFiles, nil
	}
	s.mu.Unlock()
	s.unlinkBodies(files)
}

// validArchiveName reports whether name is a clean relative slash path with
// no step outside its root.
func validArchiveName(name string) bool {
	return name != "" && !strings.HasPrefix(name, "/") && !strings.Contains(name, "\\") && path.Clean(name) == name &&
		name != "." && name != ".." && !strings.HasPrefix(name, "../")
}

// ErrRestoreRefused wraps every refusal of Restore.
var ErrRestoreRefused = errors.New("queue: refusing to restore")

// Restore unpacks a Backup archive into dir, which must be absent or empty:
// files 0600, directories 0700, each file and directory synced. It refuses
// an archive without its manifest (truncated), with an entry that is not a
// regular file or points outside dir, and then checks the restored store
// (Check), returning the manifest and the check's report.
func Restore(r io.Reader, dir string) (*BackupManifest, *CheckReport, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("queue: restore: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("queue: restore: %w", err)
	}
	if len(ents) > 0 {
		return nil, nil, fmt.Errorf("%w: %s is not empty (%d entries); restore into a new directory", ErrRestoreRefused, dir, len(ents))
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("queue: restore: %w", err)
	}
	tr := tar.NewReader(r)
	var man *BackupManifest
	dirs := map[string]bool{dir: true}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: the archive is damaged or truncated: %v", ErrRestoreRefused, err)
		}
		if man != nil {
			return nil, nil, fmt.Errorf("%w: entry %q after the manifest", ErrRestoreRefused, h.Name)
		}
		if h.Typeflag != tar.TypeReg || !validArchiveName(h.Name) {
			return nil, nil, fmt.Errorf("%w: entry %q is not a regular file inside the data directory", ErrRestoreRefused, h.Name)
		}
		if h.Name == BackupManifestName {
			man = &BackupManifest{}
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(man); err != nil {
				return nil, nil, fmt.Errorf("%w: manifest: %v", ErrRestoreRefused, err)
			}
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		parent := filepath.Dir(dst)
		if !dirs[parent] {
			if err := os.MkdirAll(parent, 0o700); err != nil {
				return nil, nil, fmt.Errorf("queue: restore: %w", err)
			}
			dirs[parent] = true
		}
		if err := restoreFile(dst, tr, h.Size); err != nil {
			return nil, nil, err
		}
	}
	if man == nil {
		return nil, nil, fmt.Errorf("%w: the archive has no manifest (%s): it is truncated or not a hermod backup", ErrRestoreRefused, BackupManifestName)
	}
	for d := range dirs {
		if err := atomicfile.SyncDir(d); err != nil {
			return nil, nil, fmt.Errorf("queue: restore: %w", err)
		}
	}
	rep, err := Check(filepath.Join(dir, backupStoreName), "")
	if err != nil {
		return man, nil, fmt.Errorf("queue: restore: check the restored store: %w", err)
	}
	return man, rep, nil
}

func restoreFile(dst string, r io.Reader, size int64) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRestoreRefused, err)
	}
	_, err = io.CopyN(f, r, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("queue: restore %s: %w", dst, err)
	}
	return nil
}

// VerifyBackup reads a whole archive and returns its manifest, or an error
// if it is damaged, truncated or has no manifest; it writes nothing.
func VerifyBackup(r io.Reader) (*BackupManifest, error) {
	tr := tar.NewReader(r)
	var man *BackupManifest
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("queue: the archive is damaged or truncated: %w", err)
		}
		if h.Name == BackupManifestName {
			man = &BackupManifest{}
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(man); err != nil {
				return nil, fmt.Errorf("queue: backup manifest: %w", err)
			}
		} else if _, err := io.Copy(io.Discard, tr); err != nil {
			return nil, fmt.Errorf("queue: the archive is damaged or truncated: %w", err)
		}
	}
	if man == nil {
		return nil, fmt.Errorf("queue: the archive has no manifest (%s): it is truncated or not a hermod backup", BackupManifestName)
	}
	return man, nil
}
