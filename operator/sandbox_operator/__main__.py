"""``python -m sandbox_operator``: validate the settings, then run the kopf operator.

A thin shim: it exits with status 2 and a message naming the bad environment variable before touching the
cluster, configures logging, and runs the handlers in :mod:`sandbox_operator.handlers` in standalone mode with
kopf's liveness endpoint. The operator's dependencies are the ``operator`` extra; a client-only install gets a
message saying so instead of a traceback. With ``SANDBOX_OPERATOR_LEADER_ELECTION`` it first waits as a standby
until it holds the Lease (:mod:`sandbox_operator.leader`).

Exit status: 0 after a clean stop (SIGTERM/SIGINT); 2 for bad settings or a client-only install; 3 when a leader
loses its Lease (no renewal within the renew deadline, or the Lease is gone or someone else's).
"""

from __future__ import annotations

import ctypes
import sys

EXIT_BAD_SETTINGS = 2
OPERATOR_MODULES = ("kopf", "prometheus_client", "pydantic_settings")
M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """glibc gives threads up to 8 malloc arenas per core, and the Kubernetes client's worker threads each grow one
    that is never returned (at 2,000 Sandboxes two arenas took the operator from 406 to 353 MB). Two are plenty
    for threads that mostly wait on the network. The process's own symbols are searched, so no library is looked
    up on disk; nothing happens on a libc without mallopt (musl)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def main() -> int:
    limit_malloc_arenas()  # before any thread starts
    try:
        import kopf

        from sandbox_operator.settings import SettingsError, get_settings
    except ImportError as error:
        if error.name not in OPERATOR_MODULES:
            raise
        print(f"sandbox-operator: {error.name} is missing: the operator needs `pip install "
              f"'sandbox-operator[operator]'` (a plain `pip install sandbox-operator` is the client only)",
              file=sys.stderr)
        return EXIT_BAD_SETTINGS
    try:
        settings = get_settings()
    except SettingsError as error:
        print(f"sandbox-operator: {error}", file=sys.stderr)
        return EXIT_BAD_SETTINGS

    kopf.configure(verbose=settings.verbose, log_format=kopf.LogFormat[settings.log_format.upper()])

    from sandbox_operator import handlers
    from sandbox_operator.handlers.runtime import Runtime, runtime

    memo = kopf.Memo()
    rt: Runtime = runtime(memo)
    del handlers, rt
    liveness = (f"http://{settings.bind_address}:{settings.health_port}/healthz"
                if settings.health_port else None)

    def run() -> None:
        kopf.run(
            standalone=True,
            clusterwide=settings.clusterwide,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            memo=memo,
        )

    if settings.leader_election:
        from sandbox_operator.leader import run_as_leader

        return run_as_leader(settings, run)
    from sandbox_operator import metrics

    metrics.LEADER.set(1)
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
