package kvm

import (
	"context"
	"slices"
	"sort"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"
)

// TestProviderSchemaServesActions checks, through the plugin protocol, that
// the actions and data sources are served with valid schemas.
func TestProviderSchemaServesActions(t *testing.T) {
	srv, err := providerserver.NewProtocol6WithError(New("test")())()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.GetProviderSchema(context.Background(), &tfprotov6.GetProviderSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range resp.Diagnostics {
		t.Errorf("%s: %s", d.Summary, d.Detail)
	}
	var actions []string
	for name := range resp.ActionSchemas {
		actions = append(actions, name)
	}
	sort.Strings(actions)
	if want := []string{"kvm_snapshot_revert", "kvm_vm_power"}; !slices.Equal(actions, want) {
		t.Errorf("actions %v, want %v", actions, want)
	}
	for _, ds := range []string{"kvm_vm", "kvm_disk"} {
		if resp.DataSourceSchemas[ds] == nil {
			t.Errorf("no data source %s", ds)
		}
	}
}

// TestDataSourceSchemasFollowResources: the data sources expose every
// attribute of their resource but what they leave out on purpose, all
// computed except the lookup keys.
func TestDataSourceSchemasFollowResources(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		rs      resource.Resource
		ds      datasource.DataSource
		keys    []string
		skipped []string
	}{
		{&VMResource{}, &VMDataSource{}, []string{"host", "name"}, []string{"migration", "wait_for_ip"}},
		{&DiskResource{}, &DiskDataSource{}, []string{"id"}, nil},
	} {
		var rs resource.SchemaResponse
		tc.rs.Schema(ctx, resource.SchemaRequest{}, &rs)
		var ds datasource.SchemaResponse
		tc.ds.Schema(ctx, datasource.SchemaRequest{}, &ds)
		for name := range rs.Schema.Attributes {
			a, ok := ds.Schema.Attributes[name]
			switch {
			case slices.Contains(tc.skipped, name):
				if ok {
					t.Errorf("data source has %s, which it should leave out", name)
				}
			case !ok:
				t.Errorf("data source lacks %s", name)
			case slices.Contains(tc.keys, name):
				if !a.IsRequired() {
					t.Errorf("data source key %s is not required", name)
				}
			case !a.IsComputed() || a.IsOptional() || a.IsRequired():
				t.Errorf("data source attribute %s is not computed only", name)
			}
		}
	}
	var ds datasource.SchemaResponse
	(&VMDataSource{}).Schema(ctx, datasource.SchemaRequest{}, &ds)
	ci := ds.Schema.Attributes["cloud_init"].GetType().String()
	// No user_data (never returned by the host) nor user_data_wo.
	if want := `types.ObjectType["meta_data":basetypes.StringType, "network_config":basetypes.StringType, "user_data_wo_version":basetypes.Int64Type]`; ci != want {
		t.Errorf("data source cloud_init is %s, want %s", ci, want)
	}
}
