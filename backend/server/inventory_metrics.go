package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
)

// inventoryCollector exports the host inventory at scrape time, so the
// numbers are never staler than the scrape.
type inventoryCollector struct {
	svc                                           *service.Service
	healthy, vms, vcpu, mem, cpus, memTotal, free *prometheus.Desc
}

func newInventoryCollector(svc *service.Service) *inventoryCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("kvm_hostd_"+name, help, nil, nil)
	}
	return &inventoryCollector{
		svc:      svc,
		healthy:  d("healthy", "1 when libvirt and OVSDB answer."),
		vms:      d("vms", "Domains defined on the host."),
		vcpu:     d("allocated_vcpus", "vCPUs allocated to domains."),
		mem:      d("allocated_memory_mib", "Memory allocated to domains, MiB."),
		cpus:     d("cpus", "Host CPUs."),
		memTotal: d("memory_mib", "Host memory, MiB."),
		free:     d("free_memory_mib", "Free host memory, MiB."),
	}
}

func (c *inventoryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.healthy, c.vms, c.vcpu, c.mem, c.cpus, c.memTotal, c.free} {
		ch <- d
	}
}

func (c *inventoryCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h := c.svc.Host(ctx)
	g := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	if h.Healthy {
		g(c.healthy, 1)
	} else {
		g(c.healthy, 0)
	}
	g(c.vms, float64(h.VMCount))
	g(c.vcpu, float64(h.AllocatedVCPU))
	g(c.mem, float64(h.AllocatedMemoryMiB))
	g(c.cpus, float64(h.CPUs))
	g(c.memTotal, float64(h.MemoryMiB))
	g(c.free, float64(h.FreeMemoryMiB))
}
