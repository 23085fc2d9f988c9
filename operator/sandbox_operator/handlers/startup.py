"""Operator-wide setup: kopf settings (each with its reason), metrics endpoint, the registry of served
namespaces, liveness probe, cleanup."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
from typing import Any

import kopf
from kubernetes import client

from sandbox_operator import constants, metrics
from sandbox_operator.handlers.registry import RegistryPublisher, keep_published, publisher_for
from sandbox_operator.handlers.runtime import runtime, utcnow

# kopf logs every successful run at INFO: for the collector's index and the watch handlers that is one line per
# sandbox per interval or event, which drowns what matters. Kept with SANDBOX_OPERATOR_VERBOSE.
ROUTINE = re.compile(r"^(Indexer 'sandbox_collection'|Handler '(sandbox-events|pod-status|policy-guard|pool-events|"
                     r"pool-pod-events|pool-policy-guard|pool-pod-policy-guard)') succeeded\.$")


class _DropRoutine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not ROUTINE.match(record.getMessage())


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    rt = runtime(memo)
    ours = rt.settings
    # Our own names for kopf's bookkeeping on Sandboxes, under the project's API group.
    settings.persistence.finalizer = constants.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=constants.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.GROUP, key="last-handled-configuration",
        # Client heartbeats are not spec changes: keep them out of the diff base.
        ignored_fields=[("metadata", "annotations", constants.ANNOTATION_LAST_ACTIVITY)])
    # Events are ours to post (one per status transition); kopf's own INFO chatter stays in the log.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = constants.MANAGER_NAME
    # One process works at a time: the Lease of leader election (leader.py) decides which, before kopf starts; no
    # peering objects needed.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Reconnect watches that the API server or a load balancer silently dropped.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Retry failed handlers sooner than kopf's 60 s default; creation must not stall for a minute.
    settings.execution.default_backoff = 5
    settings.execution.max_workers = ours.api_workers
    # asyncio.to_thread uses the loop's default executor: size it for the blocking Kubernetes client.
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=ours.api_workers, thread_name_prefix="k8s"))
    if not ours.verbose:
        logging.getLogger("kopf.objects").addFilter(_DropRoutine())
    metrics.serve(ours.metrics_port, ours.bind_address)
    logger.info("sandbox-operator %s: namespaces=%s, gc every %ss, images %s", constants.PROJECT_VERSION,
                ",".join(ours.namespaces) or "(cluster-wide)", ours.gc_interval_seconds,
                ",".join(ours.allowed_images))


@kopf.on.startup()
async def publish_served_namespaces(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Tells clients which namespaces this operator serves (an annotation on the Sandbox CRD), now and every
    heartbeat until shutdown. A failure is logged by the publisher and never stops the operator."""
    rt = runtime(memo)
    publisher = publisher_for(rt.settings, client.ApiextensionsV1Api(rt.api.api_client))
    if await asyncio.to_thread(publisher.publish, utcnow()):
        logger.info("published the namespaces this operator serves as %s on %s", publisher.key,
                    constants.CRD_NAME)
    memo.registry = publisher
    memo.registry_heartbeat = asyncio.create_task(keep_published(publisher, utcnow), name="registry-heartbeat")


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    heartbeat: asyncio.Task[None] | None = getattr(memo, "registry_heartbeat", None)
    if heartbeat is not None:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    publisher: RegistryPublisher | None = getattr(memo, "registry", None)
    rt = getattr(memo, "runtime", None)
    # With leader election a standby takes over within seconds and publishes the same entry: withdrawn meanwhile,
    # a client creating a Sandbox in that gap would be told no operator serves its namespace. Left alone, the
    # entry goes stale by itself (180 s) if nobody takes over.
    handing_over = rt is not None and rt.settings.leader_election
    if publisher is not None and not handing_over:
        await asyncio.to_thread(publisher.withdraw)
    if rt is not None:
        rt.api.api_client.close()


@kopf.on.probe(id="sandboxes")
async def sandboxes_known(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: how many Sandboxes this operator currently tracks."""
    return runtime(memo).phases.count()
