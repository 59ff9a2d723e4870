package hostd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeKey(t *testing.T, dir, name string, b []byte, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func TestReadKeyDir(t *testing.T) {
	good := bytes.Repeat([]byte{0xa5}, 32)
	t.Run("loads NAME.key files", func(t *testing.T) {
		dir := t.TempDir()
		writeKey(t, dir, "prod.key", good, 0o600)
		writeKey(t, dir, "dev.key", append(good, 'x'), 0o400)
		writeKey(t, dir, "README", []byte("not a key"), 0o644)
		keys, err := readKeyDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 2 || !bytes.Equal(keys["prod"], good) || len(keys["dev"]) != 33 {
			t.Fatalf("keys %v", keys)
		}
	})
	t.Run("no dir, no keys", func(t *testing.T) {
		keys, err := readKeyDir("")
		if err != nil || len(keys) != 0 {
			t.Fatalf("%v %v", keys, err)
		}
	})
	for _, tc := range []struct {
		name, file string
		data       []byte
		mode       os.FileMode
		want       string
	}{
		{"readable by group", "prod.key", good, 0o640, "accessible by other users"},
		{"readable by others", "prod.key", good, 0o604, "accessible by other users"},
		{"short key", "prod.key", good[:31], 0o600, "holds 31 bytes; a key needs at least 32"},
		{"empty key", "prod.key", nil, 0o600, "holds 0 bytes"},
		{"bad name", "-x.key", good, 0o600, "invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeKey(t, dir, tc.file, tc.data, tc.mode)
			_, err := readKeyDir(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if err != nil && len(tc.data) > 0 && strings.Contains(err.Error(), string(tc.data)) {
				t.Fatalf("the error shows the key: %v", err)
			}
		})
	}
	t.Run("writable dir", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if _, err := readKeyDir(dir); err == nil || !strings.Contains(err.Error(), "written by other users") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		if _, err := readKeyDir(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Fatal("no error")
		}
	})
}

func TestKeyDirFlag(t *testing.T) {
	c, err := ParseFlags([]string{"--name", "h", "--listen", "127.0.0.1:0"}, func(k string) string {
		if k == "KVM_HOSTD_KEY_DIR" {
			return "/etc/kvm-hostd/keys"
		}
		return ""
	}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.KeyDir != "/etc/kvm-hostd/keys" {
		t.Fatalf("KeyDir %q", c.KeyDir)
	}
}
