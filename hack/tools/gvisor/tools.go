//go:build tools

// Package tools records the gVisor mains that hack/build-binaries.sh builds (runsc and its containerd shim),
// from a patched copy of the module this go.mod pins.
package tools

import (
	_ "gvisor.dev/gvisor/runsc"
	_ "gvisor.dev/gvisor/shim"
)
