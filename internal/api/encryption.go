package api

// VolumeEncryption names the master key a LUKS-encrypted volume's key is
// derived from. The host holds the master key (kvm-hostd --key-dir
// NAME.key); clients only ever see and send its name.
type VolumeEncryption struct {
	Key string `json:"key"`
}

// KeyLabelPrefix starts the host label kvm-hostd adds for each
// encryption key it holds: key.NAME = "true", so that placement
// (kvm_cluster_placement host_labels) can require the key.
const KeyLabelPrefix = "key."

// KeyLabel is the host label key of the named encryption key.
func KeyLabel(name string) string { return KeyLabelPrefix + name }

// KeyName returns the master key's name, "" for a plain volume.
func (e *VolumeEncryption) KeyName() string {
	if e == nil {
		return ""
	}
	return e.Key
}

// ValidateVolumeEncryption checks an encryption request against the rest
// of the volume spec. Only qcow2 carries QEMU's native LUKS encryption
// here. A linked clone of an encrypted base is refused by the host (it
// knows the base): an encrypted layer under a clone would need each
// layer's secret in the domain XML and survive every copy and migration
// path, which no one needs for the common case of an encrypted data disk
// or an encrypted boot disk that is a full image.
func ValidateVolumeEncryption(spec *VolumeSpec) error {
	e := spec.Encryption
	if e == nil {
		return nil
	}
	if err := ValidateName("key", e.Key); err != nil {
		return invalidf("encryption.key: %s", err)
	}
	if spec.Format != FormatQCOW2 {
		return invalidf("an encrypted volume must be qcow2 (QEMU's LUKS encryption in qcow2), not %q", spec.Format)
	}
	if spec.BaseVolume != "" {
		return invalidf("an encrypted volume cannot be a linked clone (base volume %q): create it empty", spec.BaseVolume)
	}
	if spec.SourceURL != "" {
		return invalidf("an encrypted volume cannot be downloaded from source_url: the image would be stored unencrypted; create it empty")
	}
	return nil
}
