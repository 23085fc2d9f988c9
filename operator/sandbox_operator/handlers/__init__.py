"""kopf handler registrations; importing this package registers them (``kopf run -m sandbox_operator.handlers``)."""

from sandbox_operator.handlers import children, collector, pool, sandbox, startup

__all__ = ["children", "collector", "pool", "sandbox", "startup"]
