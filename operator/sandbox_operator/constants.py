"""Names shared by the operator, the SDK, the CLI, the image and the chart.

Everything that two parts of the project must agree on lives here, once.
"""

from typing import Final

GROUP: Final = "sandbox-operator.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "Sandbox"
PLURAL: Final = "sandboxes"
SINGULAR: Final = "sandbox"
SHORT_NAMES: Final = ("sbx",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Warm pools of ready, unclaimed sandbox pods (docs/pools.md).
POOL_KIND: Final = "SandboxPool"
POOL_PLURAL: Final = "sandboxpools"
POOL_SINGULAR: Final = "sandboxpool"
POOL_SHORT_NAMES: Final = ("sbxpool",)
POOL_CRD_NAME: Final = f"{POOL_PLURAL}.{GROUP}"

# Labels every child object carries.
LABEL_APP_NAME: Final = "app.kubernetes.io/name"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_SANDBOX: Final = f"{GROUP}/sandbox"
# On every pod a SandboxPool started, for its whole life (claimed or not): the pool's deny-all policy selects it.
LABEL_POOL: Final = f"{GROUP}/pool"
# On a pool's pod and on its own deny-all policy (which the pod controls): a token unique within the pool.
LABEL_POOL_POD: Final = f"{GROUP}/pool-pod"
# On a pool's pods: a hash of the template they were built from (pods of an older template are replaced).
ANNOTATION_POOL_TEMPLATE: Final = f"{GROUP}/pool-template"
# On a claimed pod: when it was handed to its Sandbox (RFC 3339 UTC); its idle clock and lifetime start there.
ANNOTATION_CLAIMED_AT: Final = f"{GROUP}/claimed-at"
APP_NAME: Final = "sandbox"
MANAGER_NAME: Final = "sandbox-operator"

# Label and annotation keys a user may not set on the pod: the operator owns them.
RESERVED_KEY_PREFIXES: Final = (f"{GROUP}/", "app.kubernetes.io/", "kubernetes.io/", "k8s.io/")

# The activity record. The SDK and CLI write an RFC 3339 UTC timestamp here (throttled); the collector reads it.
# An annotation rather than a status field, so clients need only `patch` on sandboxes, not on sandboxes/status.
ANNOTATION_LAST_ACTIVITY: Final = f"{GROUP}/last-activity"
# The operator's finalizer on every Sandbox it handles: a client that sees it knows an operator picked it up.
FINALIZER: Final = f"{GROUP}/finalizer"

# Which namespaces the running operators serve: each keeps one annotation, REGISTRY_ANNOTATION_PREFIX/<id>, on the
# Sandbox CRD (cluster-scoped, so a client can read it with a ClusterRole that grants nothing else), refreshed
# every REGISTRY_HEARTBEAT_SECONDS; an entry older than REGISTRY_STALE_SECONDS is an operator that is gone.
# See sandbox_operator.registry.
REGISTRY_ANNOTATION_PREFIX: Final = f"operators.{GROUP}"
REGISTRY_HEARTBEAT_SECONDS: Final = 60
REGISTRY_STALE_SECONDS: Final = 180
ALL_NAMESPACES: Final = "*"

# The sandbox container and the paths inside the sandbox image.
CONTAINER_NAME: Final = "sandbox"
WORKSPACE_DIR: Final = "/workspace"
TMP_DIR: Final = "/tmp"
WRITABLE_ROOTS: Final = (WORKSPACE_DIR, TMP_DIR)
SANDBOX_UID: Final = 1000
SANDBOX_GID: Final = 1000
# Without user namespaces each sandbox runs as a host UID of its own from this range (RLIMIT_NPROC and the
# kernel's per-user counters are then per sandbox); the image's /etc/passwd names every UID in it.
SANDBOX_UID_RANGE_FIRST: Final = 1_000_000_000
SANDBOX_UID_RANGE_LAST: Final = 1_000_065_535
EXEC_WRAPPER: Final = "/usr/local/bin/sandbox-exec"
FILES_TOOL: Final = "/usr/local/bin/sandbox-files"
INIT_PROGRAM: Final = "/usr/local/bin/sandbox-init"
READY_PROGRAM: Final = "/usr/local/bin/sandbox-ready"
# The SDK's channel: started through one long-lived pods/exec stream per sandbox (docs/channel.md).
AGENT_PROGRAM: Final = "/usr/local/bin/sandbox-agent"

# Environment the operator sets in the sandbox container; the exec wrapper reads its defaults from it.
ENV_PIDS_LIMIT: Final = "SANDBOX_PIDS_LIMIT"
ENV_COMMAND_TIMEOUT: Final = "SANDBOX_COMMAND_TIMEOUT"
ENV_FILE_SIZE_LIMIT: Final = "SANDBOX_FILE_SIZE_LIMIT"

# Images, always with pinned tags (never `latest`); preloaded into the node's containerd.
PROJECT_VERSION: Final = "0.1.0"
SANDBOX_IMAGE: Final = f"localhost/sandbox-operator/sandbox:{PROJECT_VERSION}"
# The optional data image: the sandbox image plus numpy, pandas and matplotlib (docs/image.md). A tag of the sandbox
# repository, so the default allow-list (sandbox:*) admits it.
SANDBOX_DATA_IMAGE: Final = f"{SANDBOX_IMAGE}-data"
OPERATOR_IMAGE: Final = f"localhost/sandbox-operator/operator:{PROJECT_VERSION}"


def pod_name(sandbox_name: str) -> str:
    """The one pod of a Sandbox has the Sandbox's name: deterministic, so a re-run never makes a second pod."""
    return sandbox_name


def network_policy_name(sandbox_name: str) -> str:
    return f"{sandbox_name}-deny-all"


# Sandbox names are DNS labels (no dots), so these names can never be a Sandbox's pod or policy name.
def pool_pod_generate_name(pool_name: str) -> str:
    """A pool's pods get generated names: ``python.pool-x7k2p``."""
    return f"{pool_name}.pool-"


def pool_network_policy_name(pool_name: str) -> str:
    return f"{pool_name}.pool-deny-all"


def pool_pod_name(pool_name: str, token: str) -> str:
    """A pool pod's name: ``python.pool-x7k2p`` (the token is also its ``LABEL_POOL_POD`` label)."""
    return f"{pool_name}.pool-{token}"


def pool_pod_network_policy_name(pod_name: str) -> str:
    """The deny-all policy of one pool pod: ``python.pool-x7k2p.deny-all``."""
    return f"{pod_name}.deny-all"
