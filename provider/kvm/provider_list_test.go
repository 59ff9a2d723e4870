package kvm

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/resource"
)

// TestProviderListsResources pins the explicit resource list: every type
// the docs describe, each once, in the order provider.go lists them.
func TestProviderListsResources(t *testing.T) {
	ctx := context.Background()
	var got []string
	for _, f := range (&KVMProvider{}).Resources(ctx) {
		var resp resource.MetadataResponse
		f().Metadata(ctx, resource.MetadataRequest{ProviderTypeName: "kvm"}, &resp)
		got = append(got, resp.TypeName)
	}
	want := []string{"kvm_disk", "kvm_network", "kvm_cluster_placement", "kvm_snapshot", "kvm_vm"}
	if !slices.Equal(got, want) {
		t.Fatalf("Resources() = %v, want %v", got, want)
	}
	// A second call builds the same list: nothing is appended at run time.
	if n := len((&KVMProvider{}).Resources(ctx)); n != len(want) {
		t.Fatalf("second Resources() has %d entries, want %d", n, len(want))
	}
}

// TestNoInitRegistration keeps the list above the only registry: no file of
// the provider registers anything from an init function.
func TestNoInitRegistration(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && fd.Name.Name == "init" {
				t.Errorf("%s: func init at %s; list resources in provider.go instead", name, fset.Position(fd.Pos()))
			}
		}
	}
}
