//go:build tools

// Package tools records the main this module builds.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
