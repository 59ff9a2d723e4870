// Package kvm implements the kvm Terraform provider: resources and data
// sources that call kvm-hostd through internal/client.
package kvm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/hashicorp/terraform-plugin-framework/action"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/list"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-log/tflog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

var (
	_ provider.Provider            = &KVMProvider{}
	_ provider.ProviderWithActions = &KVMProvider{}
)

// KVMProvider is the provider implementation.
type KVMProvider struct {
	version string
}

// New returns a provider factory for providerserver.
func New(version string) func() provider.Provider {
	return func() provider.Provider { return &KVMProvider{version: version} }
}

type providerModel struct {
	Hosts    map[string]hostConfigModel `tfsdk:"hosts"`
	Token    types.String               `tfsdk:"token"`
	CAFile   types.String               `tfsdk:"ca_file"`
	CertFile types.String               `tfsdk:"cert_file"`
	KeyFile  types.String               `tfsdk:"key_file"`
}

type hostConfigModel struct {
	Endpoint types.String `tfsdk:"endpoint"`
	Labels   types.Map    `tfsdk:"labels"`
	Token    types.String `tfsdk:"token"`
	Evacuate types.Bool   `tfsdk:"evacuate"`
}

func (p *KVMProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "kvm"
	resp.Version = p.version
}

func (p *KVMProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		MarkdownDescription: "Manage VMs, disks, snapshots and Open vSwitch networks on a fleet of KVM hosts, each running `kvm-hostd`. " +
			"The provider talks to every host directly and places VMs from live host inventory.",
		Attributes: map[string]schema.Attribute{
			"hosts": schema.MapNestedAttribute{
				MarkdownDescription: "The hosts of the fleet, keyed by host name. Falls back to `KVM_HOSTS` " +
					"(`host-a=http://127.0.0.1:7701,host-b=http://127.0.0.1:7702`).",
				Optional: true,
				NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
					"endpoint": schema.StringAttribute{
						MarkdownDescription: "Base URL of the host's kvm-hostd, e.g. `https://10.0.0.11:7443`.",
						Required:            true,
					},
					"labels": schema.MapAttribute{
						MarkdownDescription: "Labels used by placement (`host_labels`), merged over the labels the host reports.",
						Optional:            true, ElementType: types.StringType,
					},
					"token": schema.StringAttribute{
						MarkdownDescription: "Bearer token for this host, overriding the provider's `token`.",
						Optional:            true, Sensitive: true,
					},
					"evacuate": hostEvacuateAttribute(),
				}},
			},
			"token": schema.StringAttribute{
				MarkdownDescription: "Bearer token presented to every host. Falls back to `KVM_TOKEN`.",
				Optional:            true, Sensitive: true,
			},
			"ca_file": schema.StringAttribute{
				MarkdownDescription: "PEM file of the CA that signed the hosts' TLS certificates. Falls back to `KVM_CA_FILE`.",
				Optional:            true,
			},
			"cert_file": schema.StringAttribute{
				MarkdownDescription: "Client certificate (PEM) for mutual TLS; requires `key_file`. Falls back to `KVM_CERT_FILE`.",
				Optional:            true,
			},
			"key_file": schema.StringAttribute{
				MarkdownDescription: "Client private key (PEM) for mutual TLS. Falls back to `KVM_KEY_FILE`.",
				Optional:            true,
			},
		},
	}
}

// ParseHostsEnv parses KVM_HOSTS ("name=url,name=url").
func ParseHostsEnv(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, url, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(name) == "" || strings.TrimSpace(url) == "" {
			return nil, fmt.Errorf("KVM_HOSTS entry %q is not name=url", part)
		}
		name = strings.TrimSpace(name)
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("KVM_HOSTS names host %q twice", name)
		}
		out[name] = strings.TrimSpace(url)
	}
	return out, nil
}

func stringOr(v types.String, env string) string {
	if !v.IsNull() && !v.IsUnknown() && v.ValueString() != "" {
		return v.ValueString()
	}
	return os.Getenv(env)
}

func (p *KVMProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var cfg providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &cfg)...)
	if resp.Diagnostics.HasError() {
		return
	}
	token := stringOr(cfg.Token, "KVM_TOKEN")
	tlsCfg, err := clientTLS(stringOr(cfg.CAFile, "KVM_CA_FILE"), stringOr(cfg.CertFile, "KVM_CERT_FILE"), stringOr(cfg.KeyFile, "KVM_KEY_FILE"))
	if err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("ca_file"), "Invalid TLS Configuration", err.Error())
		return
	}

	type hostCfg struct {
		endpoint, token string
		labels          map[string]string
		unknown         bool
		evacuate        bool
	}
	hosts := map[string]hostCfg{}
	if cfg.Hosts != nil {
		for name, h := range cfg.Hosts {
			hc := hostCfg{endpoint: h.Endpoint.ValueString(), token: token, unknown: h.Endpoint.IsUnknown(), evacuate: h.Evacuate.ValueBool()}
			if !h.Token.IsNull() && !h.Token.IsUnknown() {
				hc.token = h.Token.ValueString()
			}
			if !h.Labels.IsNull() && !h.Labels.IsUnknown() {
				hc.labels = map[string]string{}
				resp.Diagnostics.Append(h.Labels.ElementsAs(ctx, &hc.labels, false)...)
			}
			hosts[name] = hc
		}
	} else if env := os.Getenv("KVM_HOSTS"); env != "" {
		m, err := ParseHostsEnv(env)
		if err != nil {
			resp.Diagnostics.AddError("Invalid KVM_HOSTS", err.Error())
			return
		}
		for name, url := range m {
			hosts[name] = hostCfg{endpoint: url, token: token}
		}
	}
	if len(hosts) == 0 {
		resp.Diagnostics.AddAttributeError(path.Root("hosts"), "No Hosts Configured",
			"Set the provider's hosts (hosts = { host-a = { endpoint = \"https://10.0.0.11:7443\" } }) or KVM_HOSTS=host-a=http://127.0.0.1:7701,...")
		return
	}
	fleet := &Fleet{hosts: map[string]*FleetHost{}}
	names := make([]string, 0, len(hosts))
	for n := range hosts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		hc := hosts[name]
		if hc.unknown {
			// Endpoint known only after apply: the host is unusable for
			// this plan, which resources on it will report.
			continue
		}
		c, err := client.New(client.Options{Endpoint: hc.endpoint, Token: hc.token, TLS: tlsCfg, Owner: "terraform-provider-kvm/" + p.version})
		if err != nil {
			resp.Diagnostics.AddAttributeError(path.Root("hosts").AtMapKey(name).AtName("endpoint"), "Invalid Host Endpoint",
				fmt.Sprintf("Host %q: %s", name, err))
			continue
		}
		fleet.hosts[name] = &FleetHost{Name: name, Endpoint: hc.endpoint, Labels: hc.labels, Client: c, Evacuate: hc.evacuate}
	}
	if resp.Diagnostics.HasError() {
		return
	}
	tflog.Debug(ctx, "configured kvm provider", map[string]any{"hosts": fleet.Names()})
	resp.DataSourceData = fleet
	resp.ResourceData = fleet
	resp.ListResourceData = fleet
	resp.ActionData = fleet
}

func clientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s contains no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("cert_file and key_file must be set together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("loading cert_file/key_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Resources lists every resource type the provider serves, in one place.
func (p *KVMProvider) Resources(_ context.Context) []func() resource.Resource {
	return []func() resource.Resource{
		NewDiskResource, NewNetworkResource, NewPlacementResource, NewSnapshotResource, NewVMResource,
	}
}

// ListResources lists the resource types `terraform query` can list
// (list_resources.go).
func (p *KVMProvider) ListResources(_ context.Context) []func() list.ListResource {
	return []func() list.ListResource{NewDiskListResource, NewVMListResource}
}

func (p *KVMProvider) DataSources(_ context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{NewHostDataSource, NewHostsDataSource, NewVMDataSource, NewDiskDataSource}
}

// Actions lists the provider's actions (Terraform >= 1.14).
func (p *KVMProvider) Actions(_ context.Context) []func() action.Action {
	return []func() action.Action{NewVMPowerAction, NewSnapshotRevertAction}
}
