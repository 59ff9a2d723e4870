package api

import "slices"

// Power states a client may ask for with POST /v1/vms/{name}/power (the
// kvm_vm_power action). "rebooted" is a graceful restart: ACPI shutdown,
// power-off after the VM's shutdown timeout, then a start — the same
// restart a change that needs one takes, so the guest boots afresh and the
// domain gets a new libvirt ID (what a test driver can observe).
const (
	PowerRunning  = "running"
	PowerStopped  = "stopped"
	PowerRebooted = "rebooted"
)

// PowerStates lists the values of PowerRequest.State.
var PowerStates = []string{PowerRunning, PowerStopped, PowerRebooted}

// PowerRequest is the body of POST /v1/vms/{name}/power.
type PowerRequest struct {
	State string `json:"state"`
}

// CheckPowerState refuses a state that is not one of PowerStates.
func CheckPowerState(state string) error {
	if !slices.Contains(PowerStates, state) {
		return Errorf(CodeInvalid, "power state %q must be one of running, stopped or rebooted", state)
	}
	return nil
}
