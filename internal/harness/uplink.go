package harness

import (
	"net"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// UplinkInterface is an interface of this machine that kvm-hostd on the
// embedded default accepts as an uplink: any that exists, is not a
// loopback device and has a name kvm-hostd does not reserve (the embedded
// OVSDB never takes a device over, so one holding addresses is fine
// there). The test is skipped on a machine with none.
func UplinkInterface(t testing.TB) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback == 0 && api.ValidateUplinkName(ifi.Name) == nil {
			return ifi.Name
		}
	}
	t.Skip("this machine has no interface but loopback ones to use as an uplink")
	return ""
}
