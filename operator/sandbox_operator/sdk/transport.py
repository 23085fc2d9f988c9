"""How commands and file operations reach a sandbox: over its channel, or one ``pods/exec`` each.

A manager has one transport setting (``SandboxManager(transport=...)``, else ``$SANDBOX_EXEC_TRANSPORT``):

* ``auto`` (the default): the channel (docs/channel.md); a sandbox whose image has no agent is remembered and
  gets one exec per command from then on;
* ``channel``: the channel only (an image without the agent is :class:`AgentUnavailable`);
* ``exec``: one exec per command, as before the channel existed.

The manager keeps one :class:`ChannelSlot` per sandbox (:class:`ChannelPool`), shared by every handle on it: the
session methods make a new handle per call, and each must not open a channel of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Final, Literal, cast

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.channel import Channel

log = logging.getLogger(__name__)

TransportName = Literal["auto", "channel", "exec"]
TRANSPORTS: Final = ("auto", "channel", "exec")
ENV_TRANSPORT: Final = "SANDBOX_EXEC_TRANSPORT"

Key = tuple[str, str]  # (namespace, name)
ChannelOpener = Callable[[str, str, str], Channel]  # (namespace, sandbox, pod) -> an open channel


def transport_from(value: str | None, environ: Mapping[str, str] | None = None) -> TransportName:
    """The transport to use: ``value`` when given, else ``$SANDBOX_EXEC_TRANSPORT``, else ``auto``. Anything but
    ``auto``, ``channel`` or ``exec`` is a ValueError naming where it came from."""
    source = "transport"
    if value is None:
        raw = (os.environ if environ is None else environ).get(ENV_TRANSPORT, "").strip()
        if not raw:
            return "auto"
        value, source = raw, f"${ENV_TRANSPORT}"
    if value not in TRANSPORTS:
        raise ValueError(f"{source} must be one of {', '.join(TRANSPORTS)}, not {value!r}")
    return cast(TransportName, value)


class ChannelSlot:
    """One sandbox's channel: opened on first use, opened anew once it broke or was closed.

    Opening happens under the slot's lock, so threads that need the channel at once wait for one opening instead of
    starting an agent each. With ``fallback`` (transport ``auto``), an image without the agent is remembered and
    :meth:`get` returns None from then on: the caller uses one exec per command.
    """

    def __init__(self, open_channel: Callable[[], Channel], *, fallback: bool) -> None:
        self._open_channel = open_channel
        self._fallback = fallback
        self._lock = threading.Lock()
        self._channel: Channel | None = None
        self._no_agent: errors.AgentUnavailable | None = None
        self._closed = False

    @property
    def no_agent(self) -> errors.AgentUnavailable | None:
        """Why this sandbox's commands go one exec each (None while they use the channel)."""
        return self._no_agent

    def release_broken(self) -> None:
        """Lets go of a channel that broke (its sandbox may be long gone); the next :meth:`get` opens another."""
        if not self._lock.acquire(blocking=False):
            return  # being opened or replaced right now
        try:
            if self._channel is not None and not self._channel.usable:
                self._channel = None
        finally:
            self._lock.release()

    def get(self) -> Channel | None:
        """The open channel (opened now when there is none or it broke), or None when the image has no agent.
        :class:`ChannelBroken` (reason ``Closed``) once the slot was closed."""
        channel = self._channel
        if channel is not None and channel.usable:
            return channel
        with self._lock:
            self._check_open()
            if self._no_agent is not None:
                return None
            channel = self._channel
            if channel is not None and channel.usable:
                return channel
            try:
                channel = self._open_channel()
            except errors.AgentUnavailable as exc:
                if not self._fallback:
                    raise
                log.info("no channel agent in sandbox: one exec per command from now on (%s)", exc)
                self._no_agent = exc
                return None
            if self._closed:  # closed while opening: nobody would close this one
                channel.close()
                self._check_open()
            self._channel = channel
            return channel

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ChannelBroken("the sandbox's channels were closed (the sandbox was deleted, or the manager "
                                       "closed)", reason="Closed")

    def open_channel(self) -> Channel | None:
        """The channel when one is open and usable (None otherwise: nothing is opened here)."""
        channel = self._channel
        return channel if channel is not None and channel.usable else None

    def close(self) -> None:
        """Closes the channel for good (calls in flight on it raise :class:`ChannelBroken`); one being opened is
        closed as soon as it is open."""
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


class ChannelPool:
    """A manager's channels, one :class:`ChannelSlot` per sandbox."""

    def __init__(self, open_channel: ChannelOpener, *, fallback: bool) -> None:
        self._open_channel = open_channel
        self._fallback = fallback
        self._lock = threading.Lock()
        self._slots: dict[Key, ChannelSlot] = {}

    def slot(self, namespace: str, name: str, pod: str | Callable[[], str]) -> ChannelSlot:
        """The sandbox's slot; ``pod`` is its pod's name, or how to learn it when the channel is opened."""
        key = (namespace, name)
        with self._lock:
            found = self._slots.get(key)
            if found is None:
                # Sandboxes that went away (deleted elsewhere, collected) leave broken channels behind.
                for other in self._slots.values():
                    other.release_broken()
                found = self._slots[key] = ChannelSlot(
                    lambda: self._open_channel(namespace, name, pod if isinstance(pod, str) else pod()),
                    fallback=self._fallback)
            return found

    def prepare(self, namespace: str, name: str, pod: str,
                then: Callable[[], object] | None = None) -> threading.Thread:
        """Starts opening the sandbox's channel in the background (then calls ``then``), so that its first command
        does not wait for the agent to start; a failure is left for that command to meet."""
        slot = self.slot(namespace, name, pod)

        def open_quietly() -> None:
            try:
                slot.get()
                if then is not None:
                    then()
            except Exception as exc:
                log.debug("opening the channel of %s/%s ahead of use failed: %s", namespace, name, exc)

        thread = threading.Thread(target=open_quietly, name=f"channel-open-{name}", daemon=True)
        thread.start()
        return thread

    def open_channel(self, namespace: str, name: str) -> Channel | None:
        """The sandbox's channel when one is open and usable; None otherwise (nothing is opened here)."""
        with self._lock:
            slot = self._slots.get((namespace, name))
        return None if slot is None else slot.open_channel()

    def forget(self, namespace: str, name: str) -> None:
        """Closes the sandbox's channel and forgets it (the sandbox is being deleted)."""
        with self._lock:
            slot = self._slots.pop((namespace, name), None)
        if slot is not None:
            slot.close()

    def close(self) -> None:
        """Closes every channel (background commands run on in their sandboxes)."""
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            slot.close()


__all__ = ["ENV_TRANSPORT", "TRANSPORTS", "ChannelPool", "ChannelSlot", "TransportName", "transport_from"]
