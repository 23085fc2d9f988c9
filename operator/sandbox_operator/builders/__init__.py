"""Pure functions from a Sandbox (and observed state) to Kubernetes objects and status: no I/O, no clock
(``now`` is a parameter), fully unit-tested."""
