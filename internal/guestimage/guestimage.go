// Package guestimage gives tests the bootable guest image that
// scripts/guest-image.sh builds (and caches outside the checkout).
package guestimage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

var (
	once      sync.Once
	imagePath string
	imageErr  error
)

// ImageEnv names an existing image to use instead of running scripts/guest-image.sh.
const ImageEnv = "KVM_GUEST_IMAGE"

// Path returns the absolute path of the guest image, building it on the first call
// of the process if the cache does not hold it yet (a cold build takes minutes; a
// cached image is found in milliseconds). Every later call returns the same result.
func Path(ctx context.Context) (string, error) {
	once.Do(func() {
		if p := os.Getenv(ImageEnv); p != "" {
			imagePath = p
			if _, imageErr = os.Stat(p); imageErr != nil {
				imageErr = fmt.Errorf("%s: %w", ImageEnv, imageErr)
			}
			return
		}
		imagePath, imageErr = build(ctx)
	})
	return imagePath, imageErr
}

func build(ctx context.Context) (string, error) {
	root, err := harness.ModuleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "guest-image.sh"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("scripts/guest-image.sh: %w\n%s", err, tail(stderr.String(), 40))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	path := strings.TrimSpace(lines[len(lines)-1])
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("scripts/guest-image.sh: last line %q is not an absolute path", path)
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("scripts/guest-image.sh: %w", err)
	}
	return path, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
