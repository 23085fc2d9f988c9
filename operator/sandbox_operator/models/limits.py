"""Absolute bounds of a Sandbox and a SandboxPool, written into the CRD (OpenAPI bounds and CEL rules).

The operator's settings may only tighten these. They are loose on purpose: the API server rejects nonsense,
the operator's configured maximums reject what this installation does not allow.
"""

from typing import Final

CPU_MIN: Final = "10m"
CPU_MAX: Final = "64"
MEMORY_MIN: Final = "16Mi"
MEMORY_MAX: Final = "256Gi"
EPHEMERAL_STORAGE_MIN: Final = "16Mi"
EPHEMERAL_STORAGE_MAX: Final = "1Ti"

PIDS_MIN: Final = 5
PIDS_MAX: Final = 32768
COMMAND_SECONDS_MIN: Final = 1
COMMAND_SECONDS_MAX: Final = 86400
IDLE_SECONDS_MIN: Final = 10
IDLE_SECONDS_MAX: Final = 30 * 86400
LIFETIME_SECONDS_MIN: Final = 10
LIFETIME_SECONDS_MAX: Final = 30 * 86400

# A SandboxPool: how many ready pods it may keep, and the bounds of its pods' maximum age.
POOL_SIZE_MIN: Final = 0
POOL_SIZE_MAX: Final = 1000
POOL_MAX_AGE_SECONDS_MIN: Final = 60
POOL_MAX_AGE_SECONDS_MAX: Final = 30 * 86400

# Sizes that keep every CEL rule within the API server's cost budget.
MAX_ARGV_ITEMS: Final = 64
MAX_ARG_LENGTH: Final = 4096
MAX_ENV_ITEMS: Final = 64
MAX_ENV_VALUE_LENGTH: Final = 4096
MAX_LABELS: Final = 32
MAX_ANNOTATIONS: Final = 32
MAX_ANNOTATION_VALUE_LENGTH: Final = 4096
MAX_NODE_SELECTOR: Final = 16
MAX_TOLERATIONS: Final = 16
MAX_IMAGE_LENGTH: Final = 512
MAX_PATH_LENGTH: Final = 1024
MAX_NAME_LENGTH: Final = 63  # the pod is named after the Sandbox and its name is a label value
