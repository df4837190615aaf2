package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCreateKeepsExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "secret")
	created, err := Create(path, []byte("first\n"))
	if err != nil || !created {
		t.Fatalf("Create = %v, %v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v %v, want 0600", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", di.Mode())
	}
	created, err = Create(path, []byte("second\n"))
	if err != nil || created {
		t.Fatalf("second Create = %v, %v; want false, nil", created, err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first\n" {
		t.Errorf("existing secret replaced: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
