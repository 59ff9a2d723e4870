// Command firmwareprobe runs inside a test guest and reads or writes what
// a VM's firmware and TPM keep for it: the Secure Boot state and a UEFI
// variable (through efivarfs), and an NV index of the TPM (raw TPM 2.0
// commands on /dev/tpmrm0). The real-stack tests copy it into the guest to
// show that NVRAM and TPM state survive reboots, restarts and migrations;
// the guest image has no tpm2-tools or efivar.
//
//	firmwareprobe secureboot          prints 1 when Secure Boot is on, else 0
//	firmwareprobe efivar-set NAME V   creates UEFI variable NAME (non-volatile)
//	firmwareprobe efivar-get NAME     prints its value
//	firmwareprobe tpm-nv-write V      defines the test NV index if needed, writes V
//	firmwareprobe tpm-nv-read         prints what the NV index holds
package main

import (
	"fmt"
	"os"
	"strings"
)

// probeGUID is the vendor GUID of the variables this tool creates.
const probeGUID = "7a9b0c1e-4d2f-4e6a-9b1c-2f3e4d5c6b7a"

// globalGUID is EFI_GLOBAL_VARIABLE, the vendor of SecureBoot.
const globalGUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

const efivars = "/sys/firmware/efi/efivars"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "firmwareprobe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: firmwareprobe secureboot|efivar-set|efivar-get|tpm-nv-write|tpm-nv-read")
	}
	switch cmd := args[0]; {
	case cmd == "secureboot" && len(args) == 1:
		b, err := os.ReadFile(efivars + "/SecureBoot-" + globalGUID)
		if err != nil {
			return err
		}
		// 4 bytes of attributes, then the one-byte value.
		if len(b) != 5 {
			return fmt.Errorf("SecureBoot variable of %d bytes", len(b))
		}
		fmt.Println(b[4])
	case cmd == "efivar-set" && len(args) == 3:
		// Non-volatile, boot-service and runtime access: stored in the
		// NVRAM. One write: efivarfs takes attributes and data together.
		data := append([]byte{0x07, 0, 0, 0}, args[2]...)
		return os.WriteFile(efivars+"/"+args[1]+"-"+probeGUID, data, 0o644)
	case cmd == "efivar-get" && len(args) == 2:
		b, err := os.ReadFile(efivars + "/" + args[1] + "-" + probeGUID)
		if err != nil {
			return err
		}
		if len(b) < 4 {
			return fmt.Errorf("variable of %d bytes", len(b))
		}
		fmt.Println(string(b[4:]))
	case cmd == "tpm-nv-write" && len(args) == 2:
		t, err := openTPM()
		if err != nil {
			return err
		}
		defer t.Close()
		return t.nvWrite([]byte(args[1]))
	case cmd == "tpm-nv-read" && len(args) == 1:
		t, err := openTPM()
		if err != nil {
			return err
		}
		defer t.Close()
		b, err := t.nvRead()
		if err != nil {
			return err
		}
		fmt.Println(strings.TrimRight(string(b), "\x00"))
	default:
		return fmt.Errorf("unknown command or arguments: %q", args)
	}
	return nil
}
