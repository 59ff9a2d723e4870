package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"syscall"
)

// The TPM 2.0 commands of this tool, by the numbers of the TPM 2.0
// specification, part 2 (structures) and part 3 (commands).
const (
	stSessions = 0x8002 // TPM_ST_SESSIONS

	ccNVDefineSpace = 0x0000012A
	ccNVWrite       = 0x00000137
	ccNVRead        = 0x0000014E

	rhOwner = 0x40000001 // TPM_RH_OWNER; its auth is empty on a fresh swtpm
	rsPW    = 0x40000009 // TPM_RS_PW: a password session

	algSHA256 = 0x000B

	// TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD: the owner reads and writes
	// it, with its (empty) password.
	nvAttributes = 1<<1 | 1<<17

	rcNVDefined = 0x14C // TPM_RC_NV_DEFINED

	// nvIndex is in the owner's range of NV indices.
	nvIndex = 0x01000123
	nvSize  = 64
)

type tpm struct{ rw io.ReadWriteCloser }

func openTPM() (*tpm, error) {
	// The kernel's resource manager: no handles or sessions to flush.
	// Opened blocking, not with os.OpenFile: Go would make the pollable
	// device non-blocking, and the kernel then runs a command in the
	// background and answers a read that comes before it finished with
	// 0 bytes, not EAGAIN (seen as EOF when swtpm was slow to store an NV
	// write).
	fd, err := syscall.Open("/dev/tpmrm0", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/dev/tpmrm0", Err: err}
	}
	return &tpm{rw: os.NewFile(uintptr(fd), "/dev/tpmrm0")}, nil
}

func (t *tpm) Close() error { return t.rw.Close() }

// command builds a TPM_ST_SESSIONS command with handles, one empty
// password session, and params.
func command(cc uint32, handles []uint32, params []byte) []byte {
	var body []byte
	for _, h := range handles {
		body = binary.BigEndian.AppendUint32(body, h)
	}
	// Authorization area: TPM_RS_PW, empty nonce, no attributes, empty password.
	session := binary.BigEndian.AppendUint32(nil, rsPW)
	session = append(session, 0, 0, 0, 0, 0)
	body = binary.BigEndian.AppendUint32(body, uint32(len(session)))
	body = append(body, session...)
	body = append(body, params...)
	cmd := binary.BigEndian.AppendUint16(nil, stSessions)
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(10+len(body)))
	cmd = binary.BigEndian.AppendUint32(cmd, cc)
	return append(cmd, body...)
}

// do sends a command and returns the response code and the response's
// parameter area (after the parameterSize field of a sessions response).
func (t *tpm) do(cmd []byte) (uint32, []byte, error) {
	if _, err := t.rw.Write(cmd); err != nil {
		return 0, nil, err
	}
	buf := make([]byte, 4096)
	n, err := t.rw.Read(buf)
	if err != nil {
		return 0, nil, err
	}
	if n < 10 {
		return 0, nil, fmt.Errorf("short TPM response (%d bytes)", n)
	}
	rc := binary.BigEndian.Uint32(buf[6:10])
	if rc != 0 || n < 14 {
		return rc, nil, nil
	}
	size := binary.BigEndian.Uint32(buf[10:14])
	if int(14+size) > n {
		return rc, nil, fmt.Errorf("TPM response parameters of %d bytes in %d", size, n)
	}
	return rc, buf[14 : 14+size], nil
}

func tpm2b(b []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
}

func (t *tpm) define() error {
	pub := binary.BigEndian.AppendUint32(nil, nvIndex)
	pub = binary.BigEndian.AppendUint16(pub, algSHA256)
	pub = binary.BigEndian.AppendUint32(pub, nvAttributes)
	pub = append(pub, 0, 0) // no auth policy
	pub = binary.BigEndian.AppendUint16(pub, nvSize)
	params := append(tpm2b(nil), tpm2b(pub)...) // empty index auth, the public area
	rc, _, err := t.do(command(ccNVDefineSpace, []uint32{rhOwner}, params))
	if err != nil {
		return err
	}
	if rc != 0 && rc&0xFFF != rcNVDefined {
		return fmt.Errorf("TPM2_NV_DefineSpace: response code %#x", rc)
	}
	return nil
}

// nvWrite writes data, padded with zeros to the index's size, so that a
// shorter value replaces a longer one entirely.
func (t *tpm) nvWrite(data []byte) error {
	if len(data) > nvSize {
		return fmt.Errorf("at most %d bytes", nvSize)
	}
	if err := t.define(); err != nil {
		return err
	}
	buf := make([]byte, nvSize)
	copy(buf, data)
	params := append(tpm2b(buf), 0, 0) // offset 0
	rc, _, err := t.do(command(ccNVWrite, []uint32{rhOwner, nvIndex}, params))
	if err != nil {
		return err
	}
	if rc != 0 {
		return fmt.Errorf("TPM2_NV_Write: response code %#x", rc)
	}
	return nil
}

func (t *tpm) nvRead() ([]byte, error) {
	params := binary.BigEndian.AppendUint16(nil, nvSize)
	params = append(params, 0, 0) // offset 0
	rc, out, err := t.do(command(ccNVRead, []uint32{rhOwner, nvIndex}, params))
	if err != nil {
		return nil, err
	}
	if rc != 0 {
		return nil, fmt.Errorf("TPM2_NV_Read: response code %#x", rc)
	}
	if len(out) < 2 || int(binary.BigEndian.Uint16(out))+2 > len(out) {
		return nil, fmt.Errorf("malformed TPM2_NV_Read response")
	}
	return out[2 : 2+binary.BigEndian.Uint16(out)], nil
}
