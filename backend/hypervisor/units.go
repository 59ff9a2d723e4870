package hypervisor

import "strings"

// toBytes converts a libvirt scaled integer (unit as in libvirt XML).
func toBytes(unit string, v uint64) uint64 {
	switch strings.ToLower(unit) {
	case "b", "bytes":
		return v
	case "", "k", "kib":
		return v << 10
	case "kb":
		return v * 1000
	case "m", "mib":
		return v << 20
	case "mb":
		return v * 1000 * 1000
	case "g", "gib":
		return v << 30
	case "gb":
		return v * 1000 * 1000 * 1000
	case "t", "tib":
		return v << 40
	case "tb":
		return v * 1000 * 1000 * 1000 * 1000
	}
	return v
}
