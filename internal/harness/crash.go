package harness

import "time"

// CrashEnv arms kvm-hostd's test-only crash hook at point (see
// backend/service/crashpoint.go): the process kills itself with SIGKILL when
// a request reaches that step.
func CrashEnv(point string) []string {
	return []string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_CRASH_AT=" + point}
}

// SetEnv replaces the extra environment of the host's next Start, e.g. to
// restart a host without the crash hook it died of.
func (h *Host) SetEnv(env []string) { h.env = env }

// Exited waits up to timeout for the host's process to end (a crash, a
// kill) and reports whether it did.
func (h *Host) Exited(timeout time.Duration) bool {
	if h.waitDone == nil {
		return true
	}
	select {
	case <-h.waitDone:
		return true
	case <-time.After(timeout):
		return false
	}
}

// DelayEnv makes every request that reaches point wait d inside kvm-hostd
// (backend/service/crashpoint.go), to make a race's interleaving certain.
func DelayEnv(point string, d time.Duration) []string {
	return []string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_DELAY_AT=" + point + "=" + d.String()}
}
