package server

import _ "embed"

// OpenAPI is kvm-hostd's OpenAPI 3.0 document (openapi.yaml), embedded so
// it ships with the binary. It is not served by any route.
//
//go:embed openapi.yaml
var OpenAPI []byte
