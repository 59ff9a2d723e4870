package api

import "fmt"

// TPMVersion20 is the only TPM version a VM can have: swtpm emulates 1.2
// too, but nothing that asks for a TPM today (Windows 11, systemd's
// measured boot, LUKS sealing) wants 1.2.
const TPMVersion20 = "2.0"

// CheckFirmware checks firmware, secure_boot and tpm together: the
// firmware is bios or efi, Secure Boot needs efi, and a TPM is version
// 2.0. Shared by the host (a 400) and the provider (a plan-time error).
func CheckFirmware(firmware string, secureBoot bool, tpm *TPM) error {
	switch firmware {
	case "", FirmwareBIOS, FirmwareEFI:
	default:
		return fmt.Errorf("firmware %q is not one of %s, %s", firmware, FirmwareBIOS, FirmwareEFI)
	}
	if secureBoot && firmware != FirmwareEFI {
		return fmt.Errorf("secure_boot needs firmware = %q (Secure Boot is a UEFI feature)", FirmwareEFI)
	}
	if tpm != nil && tpm.Version != TPMVersion20 {
		return fmt.Errorf("tpm.version %q is not supported; use %q", tpm.Version, TPMVersion20)
	}
	return nil
}
