package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	providerOnce sync.Once
	providerDir  string
	providerErr  error
)

// ProviderDir returns a directory holding a terraform-provider-kvm binary,
// for running the terraform CLI directly against it (dev_overrides): the
// directory of $KVM_PROVIDER_BIN if set, else the provider is built once
// per test process.
func ProviderDir() (string, error) {
	providerOnce.Do(func() {
		if p := os.Getenv("KVM_PROVIDER_BIN"); p != "" {
			abs, err := filepath.Abs(p)
			providerDir, providerErr = filepath.Dir(abs), err
			return
		}
		root, err := ModuleRoot()
		if err != nil {
			providerErr = err
			return
		}
		if providerDir, err = os.MkdirTemp("", "kvm-provider-bin-"); err != nil {
			providerErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(providerDir, "terraform-provider-kvm"), "./provider")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			providerErr = fmt.Errorf("building terraform-provider-kvm: %v\n%s", err, out)
		}
	})
	return providerDir, providerErr
}

// Workdir is a Terraform working directory with its own state, run with the
// terraform CLI and this repository's provider (dev_overrides, no init), the
// way two teams' pipelines would run side by side.
type Workdir struct {
	Dir       string
	terraform string
	env       []string
}

// NewWorkdir makes a working directory under parent for the terraform binary
// at terraformPath. env is added to the CLI's environment (e.g. KVM_HOSTS).
func NewWorkdir(parent, name, terraformPath string, env ...string) (*Workdir, error) {
	pdir, err := ProviderDir()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	rc := filepath.Join(dir, ".terraformrc")
	cfg := fmt.Sprintf("provider_installation {\n  dev_overrides {\n    %q = %q\n  }\n  direct {}\n}\n", "kvmfleet/kvm", pdir)
	if err := os.WriteFile(rc, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	w := &Workdir{Dir: dir, terraform: terraformPath}
	w.env = append(os.Environ(), "TF_CLI_CONFIG_FILE="+rc, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1")
	w.env = append(w.env, env...)
	return w, nil
}

// WriteConfig replaces the directory's main.tf.
func (w *Workdir) WriteConfig(hcl string) error {
	return os.WriteFile(filepath.Join(w.Dir, "main.tf"), []byte(hcl), 0o644)
}

// Run runs terraform with args and returns its combined output; err is set
// when terraform exits non-zero.
func (w *Workdir) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, w.terraform, args...)
	cmd.Dir = w.Dir
	cmd.Env = w.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("terraform %s in %s: %w", strings.Join(args, " "), w.Dir, err)
	}
	return string(out), nil
}

// Stdout runs terraform with args and returns its standard output alone
// (e.g. show -json, which must not be mixed with warnings).
func (w *Workdir) Stdout(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, w.terraform, args...)
	cmd.Dir = w.Dir
	cmd.Env = w.env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("terraform %s in %s: %w\n%s", strings.Join(args, " "), w.Dir, err, stderr.String())
	}
	return string(out), nil
}
