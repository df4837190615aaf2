package fsperm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func mkdir(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // not subject to the umask
		t.Fatal(err)
	}
	return path
}

func write(t *testing.T, path string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantRefused checks that err names every fragment (path, mode, fix).
func wantRefused(t *testing.T, err error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a refusal naming %q", fragments)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q lacks %q", err, f)
		}
	}
}

func TestDataDirModes(t *testing.T) {
	base := t.TempDir()
	c := Checker{UID: os.Geteuid()}
	for _, mode := range []os.FileMode{0o700, 0o750, 0o755, 0o711} {
		d := mkdir(t, filepath.Join(base, mode.String()), mode)
		if err := c.Check([]Dir{{d, "data_dir"}}, nil); err != nil {
			t.Errorf("mode %04o refused: %v", mode, err)
		}
	}
	for mode, shown := range map[os.FileMode]string{0o777: "0777", 0o770: "0770", 0o702: "0702", 0o775: "0775", 0o777 | os.ModeSticky: "1777"} {
		d := mkdir(t, filepath.Join(base, "bad-"+shown), mode)
		wantRefused(t, c.Check([]Dir{{d, "data_dir"}}, nil), "data_dir "+d, "mode "+shown, "chmod 700 "+d)
	}
	if err := c.Check([]Dir{{filepath.Join(base, "missing"), "data_dir"}}, nil); err != nil {
		t.Errorf("missing data_dir refused: %v", err)
	}
	f := write(t, filepath.Join(base, "file"), 0o600)
	wantRefused(t, c.Check([]Dir{{f, "data_dir"}}, nil), "not a directory")
}

func TestSecretModes(t *testing.T) {
	dir := t.TempDir()
	c := Checker{UID: os.Geteuid()}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		f := write(t, filepath.Join(dir, "ok"+mode.String()), mode)
		if err := c.Check(nil, []Secret{{f, "api.token_file"}}); err != nil {
			t.Errorf("mode %04o refused: %v", mode, err)
		}
	}
	for _, tc := range []struct {
		mode  os.FileMode
		shown string
	}{{0o644, "0644"}, {0o640, "0640"}, {0o604, "0604"}, {0o660, "0660"}, {0o602, "0602"}, {0o666, "0666"}} {
		f := write(t, filepath.Join(dir, "bad"+tc.shown), tc.mode)
		wantRefused(t, c.Check(nil, []Secret{{f, "api.token_file"}}), "api.token_file "+f, "mode "+tc.shown, "chmod 600 "+f)
	}
	// A link is judged by its target.
	target := write(t, filepath.Join(dir, "target"), 0o644)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, c.Check(nil, []Secret{{link, "bounce.verp_secret_file"}}), link, "0644")
	// Missing and unset files are created later, or not used.
	if err := c.Check(nil, []Secret{{filepath.Join(dir, "missing"), "x"}, {"", "y"}}); err != nil {
		t.Errorf("missing secret refused: %v", err)
	}
	wantRefused(t, c.Check(nil, []Secret{{dir, "sender.dkim_key_file"}}), "not a regular file")
}

// TestOwner: a file or directory owned by another user (not root) is
// refused. As root the file is given away; otherwise the checker is told
// it runs as someone else.
func TestOwner(t *testing.T) {
	base := t.TempDir()
	d := mkdir(t, filepath.Join(base, "data"), 0o700)
	f := write(t, filepath.Join(d, "api.token"), 0o600)
	c := Checker{UID: os.Geteuid()}
	other := 4242
	if os.Geteuid() == 0 {
		for _, p := range []string{d, f} {
			if err := os.Chown(p, other, other); err != nil {
				t.Fatal(err)
			}
		}
	} else {
		other = os.Geteuid()
		c.UID = other + 1
	}
	err := c.Check([]Dir{{d, "data_dir"}}, []Secret{{f, "api.token_file"}})
	wantRefused(t, err, "data_dir "+d, "api.token_file "+f, "owned by uid "+strconv.Itoa(other), "chown ")
	// Root-owned files are accepted from anyone (root could change them anyway).
	if os.Geteuid() == 0 {
		for _, p := range []string{d, f} {
			if err := os.Chown(p, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := (Checker{UID: 1000}).Check([]Dir{{d, "data_dir"}}, []Secret{{f, "api.token_file"}}); err != nil {
			t.Errorf("root-owned files refused: %v", err)
		}
	}
}

// TestReportsEveryProblem: one error names all of them.
func TestReportsEveryProblem(t *testing.T) {
	d := mkdir(t, filepath.Join(t.TempDir(), "data"), 0o777)
	a := write(t, filepath.Join(d, "api.token"), 0o644)
	b := write(t, filepath.Join(d, "verp.key"), 0o666)
	err := Check([]Dir{{d, "data_dir"}}, []Secret{{a, "api.token_file"}, {b, "bounce.verp_secret_file"}})
	wantRefused(t, err, "refusing to start", "data_dir "+d, "api.token_file "+a, "bounce.verp_secret_file "+b, "0777", "0644", "0666")
}
