package hypervisor

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// defaultHugepageKiB is the huge page size where the host does not say
// (the test driver): x86's 2 MiB.
const defaultHugepageKiB = 2048

// testDriverHugepages is what the embedded default (libvirt's test
// driver, which runs no guests and whose virNodeGetFreePages reports no
// counts) shows as its huge pages: 1 GiB of 2 MiB pages, so hugepage VMs
// can be planned and admitted there, and refused when they do not fit.
const testDriverHugepages = 512

// hostMemoryLayout fills the host's NUMA nodes and its huge pages of the
// default size (the size <hugepages/> without a size gets): the total
// from libvirt's capabilities, the free count from virNodeGetFreePages,
// less the pages QEMU processes have reserved but not touched yet.
func (l *Libvirt) hostMemoryLayout(c *libvirt.Connect, r *service.Resources) error {
	size := int64(defaultHugepageKiB)
	if !l.test {
		if s := meminfoKiB("Hugepagesize"); s > 0 {
			size = s
		}
	}
	cells, total, err := l.numaLayout(c, size)
	if err != nil {
		return err
	}
	hp := &api.HostHugepages{SizeKiB: size, Total: total}
	r.NUMANodes = cells
	if l.test {
		hp.Total, hp.Free = testDriverHugepages, testDriverHugepages
		r.Hugepages = hp
		return nil
	}
	for _, id := range cells {
		free, err := c.GetFreePages([]uint64{uint64(size)}, id, 1, 0)
		if err != nil {
			return wrap(err, "free huge pages of NUMA node %d", id)
		}
		for _, n := range free {
			hp.Free += int64(n)
		}
	}
	{
		// Pages mapped by a QEMU that has not touched them yet still
		// count as free in the kernel's free_hugepages; they are taken.
		hp.Free -= sysfsInt(fmt.Sprintf("/sys/kernel/mm/hugepages/hugepages-%dkB/resv_hugepages", size))
	}
	hp.Free = max(hp.Free, 0)
	r.Hugepages = hp
	return nil
}

// capsTTL is how long the NUMA cells and huge page totals read from the
// capabilities stay in use. Every admission needs them, under the host's
// admission lock, and the capabilities of a real host are a large document
// (every emulator and CPU model) that took as long to fetch and parse as
// the rest of a VM create's admission; they change only when the operator
// reconfigures huge pages. Free pages are always read live.
const capsTTL = 10 * time.Second

// numaLayout returns the host's NUMA cell ids and its total huge pages of
// size KiB, from capabilities read at most capsTTL ago.
func (l *Libvirt) numaLayout(c *libvirt.Connect, size int64) ([]int, int64, error) {
	l.capsMu.Lock()
	defer l.capsMu.Unlock()
	if l.caps != nil && l.caps.size == size && time.Since(l.caps.at) < capsTTL {
		return append([]int(nil), l.caps.cells...), l.caps.total, nil
	}
	doc, err := c.GetCapabilities()
	if err != nil {
		return nil, 0, wrap(err, "capabilities")
	}
	caps := &libvirtxml.Caps{}
	if err := caps.Unmarshal(doc); err != nil {
		return nil, 0, fmt.Errorf("parse capabilities: %w", err)
	}
	var cells []int
	var total int64
	if t := caps.Host.NUMA; t != nil && t.Cells != nil {
		for _, cell := range t.Cells.Cells {
			cells = append(cells, cell.ID)
			for _, p := range cell.PageInfo {
				if int64(p.Size) == size && (p.Unit == "" || p.Unit == "KiB") {
					total += int64(p.Count)
				}
			}
		}
	}
	l.caps = &capsLayout{at: time.Now(), size: size, cells: cells, total: total}
	return cells, total, nil
}

// capsLayout is what numaLayout keeps of the capabilities.
type capsLayout struct {
	at    time.Time
	size  int64
	cells []int
	total int64
}

// domainHugepages is what a defined domain backed by huge pages of the
// host's default size needs, in pages; 0 for one that is not.
func domainHugepages(d *libvirt.Domain, sizeKiB int64) int64 {
	// Every admission asks this of every domain, under the host's
	// admission lock: parse only the XML of a domain that can have
	// hugepages at all (parsing every domain's XML was most of a VM
	// create's admission time, and it grows with the domains).
	doc, err := d.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil || !strings.Contains(doc, "<hugepages") {
		return 0
	}
	x := &libvirtxml.Domain{}
	if err := x.Unmarshal(doc); err != nil || x.MemoryBacking == nil || x.MemoryBacking.MemoryHugePages == nil || x.Memory == nil {
		return 0
	}
	kib := int64(toBytes(orDefault(x.Memory.Unit, "KiB"), uint64(x.Memory.Value)) / 1024)
	return (kib + sizeKiB - 1) / sizeKiB
}

// meminfoKiB reads one "Name: N kB" line of /proc/meminfo; 0 if absent.
func meminfoKiB(name string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == name {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func sysfsInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}
