package server

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// Firmware rules are a 400 before libvirt is touched, with the rule named.
func TestVMFirmwareRulesAre400(t *testing.T) {
	_, h := guestTestServer(t)
	for body, want := range map[string]string{
		`{"vcpu":1,"memory_mib":64,"secure_boot":true}`:                       "secure_boot needs firmware",
		`{"vcpu":1,"memory_mib":64,"firmware":"bios","secure_boot":true}`:     "secure_boot needs firmware",
		`{"vcpu":1,"memory_mib":64,"firmware":"uefi"}`:                        "is not one of bios, efi",
		`{"vcpu":1,"memory_mib":64,"firmware":"efi","tpm":{"version":"1.2"}}`: "tpm.version",
	} {
		req := httptest.NewRequest("PUT", "/v1/vms/fw400", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 400 || !strings.Contains(rec.Body.String(), want) {
			t.Errorf("%s: %d %s, want 400 with %q", body, rec.Code, rec.Body, want)
		}
	}
}
