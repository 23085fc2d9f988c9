"""Thin wrappers over the blocking official Kubernetes client."""
