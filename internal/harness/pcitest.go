package harness

import (
	"os"
	"path/filepath"
)

// TestDriverPCI is a libvirt test-driver node definition with PCI devices,
// which test:///default has none of: open it as test://<path>. Its devices
// are a GPU and a NIC function in IOMMU groups and an audio device without
// one (as on a host without an IOMMU).
const TestDriverPCI = `<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads><active>4</active><mhz>2000</mhz><model>i686</model></cpu>
  <memory>8388608</memory>
  <device>
    <name>pci_0000_01_00_0</name>
    <parent>computer</parent>
    <capability type='pci'>
      <class>0x030200</class>
      <domain>0</domain><bus>1</bus><slot>0</slot><function>0</function>
      <product id='0x1eb8'>TU104GL [Tesla T4]</product>
      <vendor id='0x10de'>NVIDIA Corporation</vendor>
      <iommuGroup number='12'><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></iommuGroup>
    </capability>
  </device>
  <device>
    <name>pci_0000_3b_00_1</name>
    <parent>computer</parent>
    <capability type='pci'>
      <class>0x020000</class>
      <domain>0</domain><bus>59</bus><slot>0</slot><function>1</function>
      <product id='0x1572'>Ethernet Controller X710 for 10GbE SFP+</product>
      <vendor id='0x8086'>Intel Corporation</vendor>
      <iommuGroup number='40'><address domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/></iommuGroup>
    </capability>
  </device>
  <device>
    <name>pci_0000_00_1f_3</name>
    <parent>computer</parent>
    <capability type='pci'>
      <class>0x040300</class>
      <domain>0</domain><bus>0</bus><slot>31</slot><function>3</function>
      <product id='0x2668'>82801FB/FBM/FR/FW/FRW (ICH6 Family) High Definition Audio Controller</product>
      <vendor id='0x8086'>Intel Corporation</vendor>
    </capability>
  </device>
</node>
`

// WriteTestDriverPCI writes TestDriverPCI into dir and returns the libvirt
// URI that opens it.
func WriteTestDriverPCI(dir string) (string, error) {
	p := filepath.Join(dir, "test-driver-pci.xml")
	if err := os.WriteFile(p, []byte(TestDriverPCI), 0o644); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return "test://" + abs, nil
}
