package kvm

import (
	"context"
	"fmt"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework-timeouts/resource/timeouts"
	"github.com/hashicorp/terraform-plugin-framework-validators/int64validator"
	"github.com/hashicorp/terraform-plugin-framework-validators/mapvalidator"
	"github.com/hashicorp/terraform-plugin-framework-validators/stringvalidator"
	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/schema/validator"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-framework/types/basetypes"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	_ resource.ResourceWithConfigure        = &NetworkResource{}
	_ resource.ResourceWithImportState      = &NetworkResource{}
	_ resource.ResourceWithModifyPlan       = &NetworkResource{}
	_ resource.ResourceWithConfigValidators = &NetworkResource{}
)

// statusReady is a host's status when its bridge (and tunnels) match.
const statusReady = "ready"

// networkReadTimeout bounds a refresh, so a host that accepts connections
// but never answers is reported as unreachable instead of hanging the plan.
const networkReadTimeout = 2 * time.Minute

// NetworkResource is kvm_network: an OVS bridge realized on each host it
// spans, joined by tunnels when it is an overlay.
type NetworkResource struct{ fleet *Fleet }

// NewNetworkResource is the kvm_network factory.
func NewNetworkResource() resource.Resource { return &NetworkResource{} }

type networkModel struct {
	ID      types.String `tfsdk:"id"`
	Name    types.String `tfsdk:"name"`
	Hosts   types.Set    `tfsdk:"hosts"`
	VLAN    types.Int64  `tfsdk:"vlan"`
	Overlay types.String `tfsdk:"overlay"`
	VNI     types.Int64  `tfsdk:"vni"`
	MTU     types.Int64  `tfsdk:"mtu"`
	Subnet  types.Object `tfsdk:"subnet"`
	DHCP    types.Bool   `tfsdk:"dhcp"`
	// PortSecurity is kvm_network.port_security.
	PortSecurity types.Bool     `tfsdk:"port_security"`
	Uplinks      types.Map      `tfsdk:"uplinks"`
	Bridge       types.String   `tfsdk:"bridge"`
	HostStatus   types.Map      `tfsdk:"host_status"`
	Timeouts     timeouts.Value `tfsdk:"timeouts"`
}

// subnetModel is kvm_network.subnet.
type subnetModel struct {
	CIDR       types.String `tfsdk:"cidr"`
	Gateway    types.String `tfsdk:"gateway"`
	DNSServers types.List   `tfsdk:"dns_servers"`
}

var subnetAttrTypes = map[string]attr.Type{
	"cidr":        types.StringType,
	"gateway":     types.StringType,
	"dns_servers": types.ListType{ElemType: types.StringType},
}

// subnet returns the configured subnet, nil when unset; ok is false while
// any part of it is unknown.
func (m *networkModel) subnet(ctx context.Context) (sub *api.Subnet, ok bool) {
	if m.Subnet.IsUnknown() {
		return nil, false
	}
	if m.Subnet.IsNull() {
		return nil, true
	}
	var sm subnetModel
	if diags := m.Subnet.As(ctx, &sm, basetypes.ObjectAsOptions{}); diags.HasError() {
		return nil, false
	}
	if sm.CIDR.IsUnknown() || sm.Gateway.IsUnknown() || sm.DNSServers.IsUnknown() {
		return nil, false
	}
	sub = &api.Subnet{CIDR: sm.CIDR.ValueString(), Gateway: sm.Gateway.ValueString()}
	if !sm.DNSServers.IsNull() {
		for _, e := range sm.DNSServers.Elements() {
			sv, known := e.(types.String)
			if !known || sv.IsUnknown() {
				return nil, false
			}
			sub.DNSServers = append(sub.DNSServers, sv.ValueString())
		}
	}
	return sub, true
}

// subnetValue is the Terraform value of a host's subnet.
func subnetValue(sub *api.Subnet) types.Object {
	if sub == nil {
		return types.ObjectNull(subnetAttrTypes)
	}
	dns := types.ListNull(types.StringType)
	if len(sub.DNSServers) > 0 {
		dns, _ = types.ListValueFrom(context.Background(), types.StringType, sub.DNSServers)
	}
	v, _ := types.ObjectValue(subnetAttrTypes, map[string]attr.Value{
		"cidr": types.StringValue(sub.CIDR), "gateway": optString(sub.Gateway), "dns_servers": dns,
	})
	return v
}

// uplinks returns the configured uplinks (host -> interface).
func (m *networkModel) uplinks(ctx context.Context) map[string]string {
	out := map[string]string{}
	if !m.Uplinks.IsNull() && !m.Uplinks.IsUnknown() {
		m.Uplinks.ElementsAs(ctx, &out, false)
	}
	return out
}

func (r *NetworkResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_network"
}

func (r *NetworkResource) Schema(ctx context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "An Open vSwitch bridge realized on every host the network spans. VM ports get the network's " +
			"`vlan` as their access tag. With an `overlay`, the hosts are joined by VXLAN or Geneve tunnels between their " +
			"`tunnel_ip`s, so VMs on different hosts share one L2 segment. Adding or removing a host adds or removes exactly " +
			"its bridge and tunnels.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{
				Computed: true, MarkdownDescription: "The network name.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"name": schema.StringAttribute{
				Required: true, MarkdownDescription: "Network name (" + api.NamePatternDescription + "). Changing it replaces the network.",
				Validators:    []validator.String{validName("network")},
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()},
			},
			"hosts": schema.SetAttribute{
				Optional: true, Computed: true, ElementType: types.StringType,
				MarkdownDescription: "Hosts the network spans. Defaults to every configured host.",
			},
			"vlan": schema.Int64Attribute{
				Optional: true, MarkdownDescription: "Access VLAN tag (1–4094) of the VM ports on this network. Changing or removing it " +
					"retags the ports of the VMs on the network in place, live for running VMs (no restart).",
				Validators: []validator.Int64{int64validator.Between(api.MinVLAN, api.MaxVLAN)},
			},
			"overlay": schema.StringAttribute{
				Optional: true, MarkdownDescription: "Overlay encapsulation joining the hosts: `vxlan` or `geneve`. Requires `vni`.",
				Validators: []validator.String{stringvalidator.OneOf(api.OverlayVXLAN, api.OverlayGeneve)},
			},
			"vni": schema.Int64Attribute{
				Optional: true, MarkdownDescription: "Overlay network identifier (1–16777215); required with `overlay`.",
				Validators: []validator.Int64{int64validator.Between(api.MinVNI, api.MaxVNI)},
			},
			"mtu": schema.Int64Attribute{
				Optional: true, MarkdownDescription: "MTU of the bridge (576–9216). Leave room for the overlay header (50 bytes for VXLAN).",
				Validators: []validator.Int64{int64validator.Between(api.MinMTU, api.MaxMTU)},
			},
			"subnet": schema.SingleNestedAttribute{
				Optional: true,
				MarkdownDescription: "The IPv4 subnet of the network. kvm-hostd does not route it: the `gateway` is a router the " +
					"network reaches (through an `uplink`, for example). VM interfaces' static `ipv4_address` must lie in it, and " +
					"`dhcp` hands out addresses from it. Changing it applies in place.",
				Attributes: map[string]schema.Attribute{
					"cidr": schema.StringAttribute{
						Required: true, MarkdownDescription: "IPv4 network in CIDR notation, /8 to /30, without host bits (for example `10.10.0.0/24`).",
					},
					"gateway": schema.StringAttribute{
						Optional: true, MarkdownDescription: "Default gateway handed to guests: a host address of `cidr`.",
					},
					"dns_servers": schema.ListAttribute{
						Optional: true, ElementType: types.StringType,
						MarkdownDescription: "DNS servers handed to guests (IPv4 addresses, at most 8).",
					},
				},
			},
			"dhcp": schema.BoolAttribute{
				Optional: true, Computed: true, Default: booldefault.StaticBool(false),
				MarkdownDescription: "Serve DHCP on the network (requires `subnet`). Each host answers only its own VMs: a NIC's " +
					"static `ipv4_address`, else a stable address derived from its MAC. Each host's server uses one address at the " +
					"top of the subnet (the highest for the first host in name order, the next one down for the second, skipping " +
					"the `gateway`); those addresses are reserved. When a VM migrates, its new host serves it.",
			},
			"port_security": schema.BoolAttribute{
				Optional: true, Computed: true, Default: booldefault.StaticBool(true),
				MarkdownDescription: "Confine every VM port to its own traffic, as cloud platforms do: a port may send only " +
					"from its NIC's MAC and, where the NIC's IPv4 address is known (a static `ipv4_address`, or its DHCP " +
					"reservation when `dhcp = true`), IPv4 and ARP only from that address; a NIC whose address is not known is " +
					"held to its MAC. DHCP server replies from VM ports are always dropped, so a guest cannot hand out rogue " +
					"gateways. IPv6 is checked on the source MAC only. Enforced with OpenFlow rules on each host's bridge. " +
					"Set `false` for guests that route, bridge or move addresses between them (VRRP, keepalived). Changing " +
					"it applies in place, without touching VMs.",
			},
			"uplinks": schema.MapAttribute{
				Optional: true, ElementType: types.StringType,
				MarkdownDescription: "Host interface that connects the network to the outside, per host name (for example " +
					"`{ host-a = \"eth1\" }`). The interface becomes a trunk shared by every network using it on that host; a " +
					"network with `vlan` sends and receives its frames tagged with it, a network without `vlan` untagged ones only. " +
					"Removing an entry disconnects that host and releases the interface once no network uses it. Open vSwitch takes " +
					"the interface over, so it must be one the host does not use itself: `lo` and the interfaces kvm-hostd, libvirt " +
					"and Open vSwitch create (`kvm-*`, `kvu-*`, `kpn-*`, `kpu-*`, `kt-*`, `kd-*`, `vnet*`, `macvtap*`, `virbr*`, " +
					"`ovs-system`, `ovs-netdev`, OVS tunnel devices) are refused at plan time; the host also refuses a loopback " +
					"device and, with a real Open vSwitch, an interface holding one of its IPv4/IPv6 global addresses or its default route.",
				Validators: []validator.Map{mapvalidator.ValueStringsAre(uplinkNameValidator{})},
			},
			"bridge": schema.StringAttribute{
				Computed: true, MarkdownDescription: "Name of the OVS bridge on every host (derived from the name).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()},
			},
			"host_status": schema.MapAttribute{
				Computed: true, ElementType: types.StringType,
				MarkdownDescription: "Per host: `ready` when the bridge and its tunnels match the configuration, otherwise what " +
					"drifted (for example a tunnel deleted out of band). A drifted host shows as a change in the plan and apply repairs it.",
			},
		},
		Blocks: map[string]schema.Block{
			"timeouts": timeouts.Block(ctx, timeouts.Opts{Create: true, Read: true, Update: true, Delete: true}),
		},
	}
}

func (r *NetworkResource) ConfigValidators(context.Context) []resource.ConfigValidator {
	return []resource.ConfigValidator{networkOverlayValidator{}, networkSubnetValidator{}}
}

// networkSubnetValidator checks the subnet and that dhcp has one.
type networkSubnetValidator struct{}

func (networkSubnetValidator) Description(context.Context) string {
	return "subnet must be a valid IPv4 subnet, and dhcp needs it"
}
func (v networkSubnetValidator) MarkdownDescription(ctx context.Context) string {
	return v.Description(ctx)
}

func (networkSubnetValidator) ValidateResource(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m networkModel
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("subnet"), &m.Subnet)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("dhcp"), &m.DHCP)...)
	if resp.Diagnostics.HasError() {
		return
	}
	sub, known := m.subnet(ctx)
	if !known {
		return
	}
	if err := api.ValidateSubnet(sub); err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("subnet"), "Invalid Subnet", err.Error())
		return
	}
	if m.DHCP.ValueBool() && sub == nil {
		resp.Diagnostics.AddAttributeError(path.Root("dhcp"), "DHCP Without Subnet", "dhcp = true needs a subnet to hand out addresses from.")
	}
}

// uplinkNameValidator checks uplink interface names at plan time
// (api.ValidateUplinkName): valid interface names, and none that can
// never be an uplink. What only the host knows (the interface exists, holds
// no host address) kvm-hostd checks at apply.
type uplinkNameValidator struct{}

func (uplinkNameValidator) Description(context.Context) string {
	return "a host network interface name that can be an uplink"
}
func (v uplinkNameValidator) MarkdownDescription(ctx context.Context) string {
	return v.Description(ctx)
}

func (uplinkNameValidator) ValidateString(_ context.Context, req validator.StringRequest, resp *validator.StringResponse) {
	if req.ConfigValue.IsNull() || req.ConfigValue.IsUnknown() {
		return
	}
	name := req.ConfigValue.ValueString()
	if err := api.ValidateInterfaceName(name); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Invalid Interface Name", err.Error())
		return
	}
	if err := api.ValidateUplinkName(name); err != nil {
		resp.Diagnostics.AddAttributeError(req.Path, "Interface Cannot Be an Uplink", err.Error())
	}
}

// networkOverlayValidator: overlay and vni go together.
type networkOverlayValidator struct{}

func (networkOverlayValidator) Description(context.Context) string {
	return "vni is required with overlay, and only allowed with it"
}
func (v networkOverlayValidator) MarkdownDescription(ctx context.Context) string {
	return v.Description(ctx)
}

func (networkOverlayValidator) ValidateResource(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var overlay types.String
	var vni types.Int64
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("overlay"), &overlay)...)
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("vni"), &vni)...)
	if overlay.IsUnknown() || vni.IsUnknown() {
		return
	}
	if !overlay.IsNull() && vni.IsNull() {
		resp.Diagnostics.AddAttributeError(path.Root("vni"), "Missing VNI", fmt.Sprintf("overlay = %q needs a vni (1–16777215).", overlay.ValueString()))
	}
	if overlay.IsNull() && !vni.IsNull() {
		resp.Diagnostics.AddAttributeError(path.Root("overlay"), "VNI Without Overlay", "vni is only meaningful with overlay = \"vxlan\" or \"geneve\".")
	}
}

func (r *NetworkResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.fleet = fleetFrom(req.ProviderData, &resp.Diagnostics)
}

// ModifyPlan fills the default host set, checks hosts are configured, and
// plans every host as ready so a drifted host shows as a change.
func (r *NetworkResource) ModifyPlan(ctx context.Context, req resource.ModifyPlanRequest, resp *resource.ModifyPlanResponse) {
	if req.Plan.Raw.IsNull() || r.fleet == nil {
		return
	}
	var plan networkModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if !plan.Name.IsUnknown() {
		plan.Bridge = types.StringValue(api.BridgeName(plan.Name.ValueString()))
		plan.ID = plan.Name
	}
	var hosts []string
	var cfgHosts types.Set
	resp.Diagnostics.Append(req.Config.GetAttribute(ctx, path.Root("hosts"), &cfgHosts)...)
	if cfgHosts.IsNull() {
		// Not set: every configured host, re-evaluated on each plan so a
		// host whose bridge vanished shows up as being added back.
		plan.Hosts, _ = types.SetValueFrom(ctx, types.StringType, r.fleet.Names())
	}
	if !plan.Hosts.IsUnknown() && !plan.Hosts.IsNull() {
		resp.Diagnostics.Append(plan.Hosts.ElementsAs(ctx, &hosts, false)...)
		var unknown []string
		for _, h := range hosts {
			if _, err := r.fleet.Host(h); err != nil {
				unknown = append(unknown, h)
			}
		}
		if len(unknown) > 0 {
			resp.Diagnostics.AddAttributeError(path.Root("hosts"), "Unknown Hosts",
				fmt.Sprintf("hosts %s are not configured in the provider (configured: %s)", strings.Join(unknown, ", "), strings.Join(r.fleet.Names(), ", ")))
			return
		}
		if len(hosts) == 0 {
			resp.Diagnostics.AddAttributeError(path.Root("hosts"), "No Hosts", "a network must span at least one host")
			return
		}
		var strays []string
		for h := range plan.uplinks(ctx) {
			if !slices.Contains(hosts, h) {
				strays = append(strays, h)
			}
		}
		if len(strays) > 0 {
			slices.Sort(strays)
			resp.Diagnostics.AddAttributeError(path.Root("uplinks"), "Uplink Host Not In Network",
				fmt.Sprintf("uplinks names %s, which the network does not span (hosts: %s)", strings.Join(strays, ", "), strings.Join(hosts, ", ")))
			return
		}
		if sub, known := plan.subnet(ctx); known && sub != nil && plan.DHCP.ValueBool() {
			if _, err := api.DHCPServerIPs(*sub, hosts); err != nil {
				resp.Diagnostics.AddAttributeError(path.Root("subnet"), "Subnet Too Small For DHCP", err.Error())
				return
			}
		}
		status := map[string]string{}
		for _, h := range hosts {
			status[h] = statusReady
		}
		plan.HostStatus, _ = types.MapValueFrom(ctx, types.StringType, status)
	} else {
		plan.HostStatus = types.MapUnknown(types.StringType)
	}
	resp.Diagnostics.Append(resp.Plan.Set(ctx, &plan)...)
}

func (m *networkModel) spec() api.NetworkSpec {
	return api.NetworkSpec{
		VLAN:    m.VLAN.ValueInt64(),
		Overlay: m.Overlay.ValueString(),
		VNI:     m.VNI.ValueInt64(),
		MTU:     m.MTU.ValueInt64(),
		// Always sent, so a host applies exactly what the plan says.
		PortSecurity: new(m.PortSecurity.IsNull() || m.PortSecurity.IsUnknown() || m.PortSecurity.ValueBool()),
	}
}

func (m *networkModel) hostNames(ctx context.Context) []string {
	var hosts []string
	if !m.Hosts.IsNull() && !m.Hosts.IsUnknown() {
		m.Hosts.ElementsAs(ctx, &hosts, false)
	}
	sort.Strings(hosts)
	return hosts
}

// peersFor reads the tunnel IPs of the network's hosts; an overlay needs
// every host's.
func (r *NetworkResource) peers(ctx context.Context, hosts []string, overlay string) ([]api.NetworkPeer, error) {
	if overlay == "" {
		return nil, nil
	}
	invs := r.fleet.Inventories(ctx, hosts)
	peers := make([]api.NetworkPeer, 0, len(invs))
	var problems []string
	for _, inv := range invs {
		switch {
		case !inv.Healthy:
			problems = append(problems, fmt.Sprintf("host %s is unreachable (%s)", inv.Name, inv.Message))
		case inv.TunnelIP == "":
			problems = append(problems, fmt.Sprintf("host %s has no tunnel_ip (start kvm-hostd with --tunnel-ip)", inv.Name))
		default:
			peers = append(peers, api.NetworkPeer{Host: inv.Name, TunnelIP: inv.TunnelIP})
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("overlay needs every host's tunnel IP: %s", strings.Join(problems, "; "))
	}
	return peers, nil
}

// forEachHost runs fn on every host concurrently and reports per-host errors.
func forEachHost(hosts []string, fn func(host string) error) map[string]error {
	var mu sync.Mutex
	errs := map[string]error{}
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(h); err != nil {
				mu.Lock()
				errs[h] = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// describeHostErrors renders "host-b: ..." lines plus what succeeded.
func describeHostErrors(action string, hosts []string, errs map[string]error) string {
	var ok, lines []string
	for _, h := range hosts {
		if err, bad := errs[h]; bad {
			lines = append(lines, fmt.Sprintf("  %s: %s", h, err))
		} else {
			ok = append(ok, h)
		}
	}
	msg := fmt.Sprintf("%s failed on %d of %d hosts:\n%s", action, len(errs), len(hosts), strings.Join(lines, "\n"))
	if len(ok) > 0 {
		msg += fmt.Sprintf("\nIt succeeded on %s, which keep the network; applying again converges (creates are idempotent).", strings.Join(ok, ", "))
	}
	return msg
}

// ensure realizes the network on every host of the plan. Each host gets
// its own uplink and DHCP server address.
func (r *NetworkResource) ensure(ctx context.Context, plan *networkModel) (map[string]error, error) {
	hosts := plan.hostNames(ctx)
	spec := plan.spec()
	peers, err := r.peers(ctx, hosts, spec.Overlay)
	if err != nil {
		return nil, err
	}
	spec.Peers = peers
	spec.Subnet, _ = plan.subnet(ctx)
	spec.DHCP = plan.DHCP.ValueBool()
	var serverIPs map[string]string
	if spec.DHCP && spec.Subnet != nil {
		if serverIPs, err = api.DHCPServerIPs(*spec.Subnet, hosts); err != nil {
			return nil, err
		}
	}
	uplinks := plan.uplinks(ctx)
	name := plan.Name.ValueString()
	return forEachHost(hosts, func(h string) error {
		fh, err := r.fleet.Host(h)
		if err != nil {
			return err
		}
		hs := spec
		hs.Uplink = uplinks[h]
		hs.DHCPServerIP = serverIPs[h]
		_, err = fh.Client.PutNetwork(ctx, name, hs)
		return err
	}), nil
}

// realize runs ensure and reports failures as "Unable to <action> Network",
// naming the hosts that failed and those that succeeded.
func (r *NetworkResource) realize(ctx context.Context, plan *networkModel, action, doing string, diags *diag.Diagnostics) bool {
	errs, err := r.ensure(ctx, plan)
	summary := "Unable to " + action + " Network"
	if err != nil {
		diags.AddError(summary, fmt.Sprintf("network %s: %s", plan.Name.ValueString(), err))
		return false
	}
	if len(errs) > 0 {
		diags.AddError(summary, describeHostErrors(doing+" network "+plan.Name.ValueString(), plan.hostNames(ctx), errs))
		return false
	}
	return true
}

func (r *NetworkResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, networkIdentityOf)
	var plan networkModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Create(ctx, 10*time.Minute)
	resp.Diagnostics.Append(diags...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !r.realize(ctx, &plan, "Create", "creating", &resp.Diagnostics) {
		return
	}
	r.readInto(ctx, &plan, false)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

// readInto refreshes host_status (and the spec from the first host that
// has the network). With pruneMissing, hosts where the bridge is gone are
// dropped from hosts, so the plan shows them being added back. Hosts that
// could not be read keep their prior status and are returned in unread.
func (r *NetworkResource) readInto(ctx context.Context, m *networkModel, pruneMissing bool) (found bool, unread map[string]error) {
	hosts := m.hostNames(ctx)
	name := m.Name.ValueString()
	prior := map[string]string{}
	if !m.HostStatus.IsNull() && !m.HostStatus.IsUnknown() {
		m.HostStatus.ElementsAs(ctx, &prior, false)
	}
	type result struct {
		net *api.Network
		err error
	}
	results := make([]result, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fh, err := r.fleet.Host(h)
			if err != nil {
				results[i].err = err
				return
			}
			results[i].net, results[i].err = fh.ReadNetwork(ctx, name)
		}()
	}
	wg.Wait()

	// The peers each host should have are the other hosts of the network.
	status := map[string]string{}
	var present []string
	var sample *api.Network
	wantSub, _ := m.subnet(ctx)
	var serverIPs map[string]string
	if m.DHCP.ValueBool() && wantSub != nil {
		serverIPs, _ = api.DHCPServerIPs(*wantSub, hosts)
	}
	wantUplinks := m.uplinks(ctx)
	uplinks := map[string]string{}
	for i, h := range hosts {
		res := results[i]
		switch {
		case res.err != nil && isNotFound(res.err):
			if !pruneMissing {
				present = append(present, h)
				status[h] = "missing"
			}
		case res.err != nil:
			// Keep what we knew, so one host being down does not turn
			// into a plan to change the network.
			tflog.Warn(ctx, "cannot read network on host", map[string]any{"network": name, "host": h, "error": res.err.Error()})
			if unread == nil {
				unread = map[string]error{}
			}
			unread[h] = res.err
			present = append(present, h)
			if u := wantUplinks[h]; u != "" {
				uplinks[h] = u
			}
			if s, ok := prior[h]; ok {
				status[h] = s
			} else {
				status[h] = statusReady
			}
		default:
			found = true
			present = append(present, h)
			if sample == nil {
				sample = res.net
			}
			status[h] = networkDrift(res.net, h, hosts, m)
			if status[h] == statusReady {
				status[h] = addressingDrift(res.net, wantSub, m.DHCP.ValueBool(), serverIPs[h], wantUplinks[h])
			}
			if status[h] == statusReady && !m.PortSecurity.IsNull() && !m.PortSecurity.IsUnknown() &&
				res.net.PortSecurity != m.PortSecurity.ValueBool() {
				status[h] = fmt.Sprintf("port_security is %t", res.net.PortSecurity)
			}
			if res.net.Uplink != "" {
				uplinks[h] = res.net.Uplink
			}
		}
	}
	if sample != nil {
		m.Bridge = types.StringValue(sample.Bridge)
		m.VLAN = optInt64(sample.VLAN)
		m.Overlay = optString(sample.Overlay)
		m.VNI = optInt64(sample.VNI)
		m.MTU = optInt64(sample.MTU)
		m.Subnet = subnetValue(sample.Subnet)
		m.DHCP = types.BoolValue(sample.DHCP)
		m.PortSecurity = types.BoolValue(sample.PortSecurity)
	}
	if len(uplinks) > 0 || (!m.Uplinks.IsNull() && !m.Uplinks.IsUnknown()) {
		m.Uplinks, _ = types.MapValueFrom(ctx, types.StringType, uplinks)
	} else {
		m.Uplinks = types.MapNull(types.StringType)
	}
	if m.DHCP.IsNull() || m.DHCP.IsUnknown() {
		m.DHCP = types.BoolValue(false)
	}
	if m.PortSecurity.IsNull() || m.PortSecurity.IsUnknown() {
		m.PortSecurity = types.BoolValue(true)
	}
	m.ID = types.StringValue(name)
	m.Hosts, _ = types.SetValueFrom(ctx, types.StringType, present)
	m.HostStatus, _ = types.MapValueFrom(ctx, types.StringType, status)
	return found, unread
}

// networkDrift compares one host's bridge with what the network should be
// there: tunnels to exactly the other hosts when it is an overlay.
func networkDrift(n *api.Network, host string, hosts []string, m *networkModel) string {
	if n.Overlay == "" {
		return statusReady
	}
	have := map[string]bool{}
	for _, t := range n.Tunnels {
		have[t.Peer] = true
	}
	var missing []string
	for _, h := range hosts {
		if h != host && !have[h] {
			missing = append(missing, h)
		}
	}
	if len(missing) > 0 {
		return "tunnels missing to " + strings.Join(missing, ", ")
	}
	return statusReady
}

// addressingDrift compares one host's DHCP server and uplink with the
// configuration.
func addressingDrift(n *api.Network, sub *api.Subnet, dhcp bool, serverIP, uplink string) string {
	have := n.Subnet
	switch {
	case (have == nil) != (sub == nil) || have != nil && (have.CIDR != sub.CIDR || have.Gateway != sub.Gateway ||
		!slices.Equal(have.DNSServers, sub.DNSServers)):
		return "subnet differs"
	case dhcp && !n.DHCP:
		return "dhcp server port missing"
	case dhcp && n.DHCPServerIP != serverIP:
		return fmt.Sprintf("dhcp server address %s, want %s", n.DHCPServerIP, serverIP)
	case n.Uplink != uplink && uplink != "":
		return "uplink " + uplink + " not connected"
	case n.Uplink != uplink:
		return "uplink " + n.Uplink + " still connected"
	}
	return statusReady
}

func optInt64(v int64) types.Int64 {
	if v == 0 {
		return types.Int64Null()
	}
	return types.Int64Value(v)
}

func optString(s string) types.String {
	if s == "" {
		return types.StringNull()
	}
	return types.StringValue(s)
}

func (r *NetworkResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	defer syncIdentity(ctx, &resp.State, req.State, resp.Identity, &resp.Diagnostics, networkIdentityOf)
	var state networkModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if state.Hosts.IsNull() || len(state.hostNames(ctx)) == 0 {
		state.Hosts, _ = types.SetValueFrom(ctx, types.StringType, r.fleet.Names())
	}
	timeout, diags := state.Timeouts.Read(ctx, networkReadTimeout)
	resp.Diagnostics.Append(diags...)
	readCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	found, unread := r.readInto(readCtx, &state, true)
	for _, h := range slices.Sorted(maps.Keys(unread)) {
		if err := unread[h]; hostUnreachable(err) {
			warnHostUnreachable(&resp.Diagnostics, h, "network "+state.Name.ValueString(), err)
		} else {
			addAPIError(&resp.Diagnostics, "Unable to Read Network", fmt.Sprintf("network %s on host %s", state.Name.ValueString(), h), err)
		}
	}
	if resp.Diagnostics.HasError() {
		return
	}
	if !found && len(state.hostNames(ctx)) == 0 {
		resp.State.RemoveResource(ctx)
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &state)...)
}

func (r *NetworkResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	defer syncIdentity(ctx, &resp.State, req.Plan, resp.Identity, &resp.Diagnostics, networkIdentityOf)
	var plan, state networkModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &plan)...)
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := plan.Timeouts.Update(ctx, 10*time.Minute)
	resp.Diagnostics.Append(diags...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !r.realize(ctx, &plan, "Update", "updating", &resp.Diagnostics) {
		return
	}
	// Hosts that left the network lose its bridge and tunnels.
	keep := map[string]bool{}
	for _, h := range plan.hostNames(ctx) {
		keep[h] = true
	}
	var removed []string
	for _, h := range state.hostNames(ctx) {
		if !keep[h] {
			removed = append(removed, h)
		}
	}
	if errs := r.deleteOn(ctx, plan.Name.ValueString(), removed); len(errs) > 0 {
		resp.Diagnostics.AddError("Unable to Update Network", describeHostErrors("removing network "+plan.Name.ValueString()+" from hosts", removed, errs))
		return
	}
	r.readInto(ctx, &plan, false)
	resp.Diagnostics.Append(resp.State.Set(ctx, &plan)...)
}

func (r *NetworkResource) deleteOn(ctx context.Context, name string, hosts []string) map[string]error {
	return forEachHost(hosts, func(h string) error {
		fh, err := r.fleet.Host(h)
		if err != nil {
			return err
		}
		if err := fh.Client.DeleteNetwork(ctx, name); err != nil && !isNotFound(err) {
			return err
		}
		return nil
	})
}

func (r *NetworkResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var state networkModel
	resp.Diagnostics.Append(req.State.Get(ctx, &state)...)
	if resp.Diagnostics.HasError() {
		return
	}
	timeout, diags := state.Timeouts.Delete(ctx, 10*time.Minute)
	resp.Diagnostics.Append(diags...)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hosts := state.hostNames(ctx)
	if errs := r.deleteOn(ctx, state.Name.ValueString(), hosts); len(errs) > 0 {
		resp.Diagnostics.AddError("Unable to Delete Network", describeHostErrors("deleting network "+state.Name.ValueString(), hosts, errs))
	}
}

// ImportState takes the network name and finds the hosts that have it.
func (r *NetworkResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if !importIDFromIdentity(ctx, &req, resp, "name") {
		return
	}
	if err := api.ValidateName("network", req.ID); err != nil {
		resp.Diagnostics.AddError("Invalid Import ID", fmt.Sprintf("kvm_network import ID is the network name: %s", err))
		return
	}
	m := networkModel{Name: types.StringValue(req.ID), HostStatus: types.MapNull(types.StringType),
		Subnet: types.ObjectNull(subnetAttrTypes), DHCP: types.BoolValue(false), PortSecurity: types.BoolValue(true),
		Uplinks: types.MapNull(types.StringType)}
	m.Hosts, _ = types.SetValueFrom(ctx, types.StringType, r.fleet.Names())
	if found, _ := r.readInto(ctx, &m, true); !found {
		resp.Diagnostics.AddError("Cannot Import Network", fmt.Sprintf("network %q exists on none of the configured hosts (%s)", req.ID, strings.Join(r.fleet.Names(), ", ")))
		return
	}
	// Again, now that subnet, dhcp and uplinks are known, so host_status
	// compares each host with them rather than with nothing.
	r.readInto(ctx, &m, true)
	m.Timeouts = timeouts.Value{Object: types.ObjectNull(map[string]attr.Type{
		"create": types.StringType, "read": types.StringType, "update": types.StringType, "delete": types.StringType,
	})}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
