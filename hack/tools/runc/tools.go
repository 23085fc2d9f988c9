//go:build tools

// Package tools records the main this module builds (cgo + libseccomp: see hack/build-binaries.sh).
package tools

import _ "github.com/opencontainers/runc"
