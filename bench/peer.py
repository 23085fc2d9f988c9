"""llm-sandbox, the peer the benchmarks measure side by side, driven by a script run in an interpreter of its own (a
venv with ``llm-sandbox[k8s]``: ``make bench-exec`` and ``make bench-code`` install the pinned one into the cache).

Its pods run the sandboxes' own image in a namespace of their own, labelled out of Pod Security ``restricted``: its
pod manifests set no security context. A script is :data:`PEER_PRELUDE` followed by a body; it prints one JSON line,
``{"metrics": {NAME: number}, "errors": {NAME: text}, "notes": [text]}``, through the prelude's ``report``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import textwrap
from pathlib import Path

from sandbox_operator import constants

PEER_NAMESPACE_LABEL = "pod-security.kubernetes.io/enforce=privileged"

# Run in the peer's interpreter, which has neither this package nor the test kit: its own percentile and timer.
# argv: kubeconfig, namespace, image, then the body's own arguments from sys.argv[4].
PEER_PRELUDE = textwrap.dedent('''
    import json, os, sys, time
    from kubernetes import client, config

    kubeconfig, namespace, image = sys.argv[1], sys.argv[2], sys.argv[3]
    config.load_kube_config(kubeconfig)

    def pod_manifest(env=None):
        container = {"name": "sandbox-container", "image": image, "imagePullPolicy": "Never",
                     "command": ["/usr/local/bin/sandbox-init"]}
        if env:
            container["env"] = [{"name": key, "value": value} for key, value in env.items()]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "llm-sandbox-bench-" + os.urandom(3).hex(), "namespace": namespace,
                         "labels": {"app": "llm-sandbox-bench"}},
            "spec": {"containers": [container], "restartPolicy": "Never"},
        }
    def pct(v, p):
        v = sorted(v); k = (len(v) - 1) * p / 100; lo = int(k); hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)
    def timed(fn, n, warm=2):
        for _ in range(warm): fn()
        s = []
        for _ in range(n):
            t = time.perf_counter(); fn(); s.append(time.perf_counter() - t)
        return s
    def report(metrics, errors, notes=()):
        print(json.dumps({"metrics": metrics, "errors": errors, "notes": list(notes)}))
''')


def run_peer(python: str, body: str, kubeconfig: str, namespace: str, *args: str,
             timeout: float = 1800) -> tuple[dict[str, float | None], list[str]]:
    """Runs :data:`PEER_PRELUDE` + ``body`` with ``python`` against the sandboxes' image; its metrics, and notes: the
    script's own, a line per metric that failed, or why the whole script failed."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PEER_PRELUDE + body)
    try:
        proc = subprocess.run([python, f.name, kubeconfig, namespace, constants.SANDBOX_IMAGE, *args],
                              capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        return {}, [f"llm-sandbox failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:300]}"]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    notes = [f"llm-sandbox: {note}" for note in report.get("notes", [])]
    notes += [f"llm-sandbox {metric}: FAILED: {error}" for metric, error in report["errors"].items()]
    return dict(report["metrics"]), notes
