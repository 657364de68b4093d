"""The signal adapter: turns blinker signal sends into events for a batcher.

``SignalAdapter.connect()`` connects one receiver per signal, held strongly (blinker's default
weak references would silently drop a closure), never twice for the same sender. A receiver
builds the event on the sender's thread (validated, JSON-safe, stamped) and hands it on; a bad
payload, a closed batcher or a full queue is counted and logged, never raised into the
worker's ``send()`` (that would skip blinker's other receivers and kill a job thread).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from blinker import ANY, Signal

from timelapser_workers import signals as _signals
from timelapser_workers.events import Event, Priority, build_event

__all__ = ["SignalAdapter", "sender_name"]

Receiver = Callable[..., bool]


def sender_name(sender: Any) -> str | None:
    """The worker name of a signal's sender: a str itself, else its ``name``, else its type."""
    if sender is None or isinstance(sender, str):
        return sender or None
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) and name else type(sender).__name__


class SignalAdapter:
    """Connects signals to a batcher. ``submit(event, batch)`` queues an event (False if it
    was refused or dropped; it must never raise into the sender); ``reject(event_type, sender,
    error)`` counts and reports an event refused where it was made."""

    def __init__(
        self,
        submit: Callable[[Event, bool], bool],
        reject: Callable[[str, Any, Exception], None],
        max_event_bytes: int,
    ) -> None:
        self._submit = submit
        self._reject = reject
        self._max_event_bytes = max_event_bytes
        self._connections: list[tuple[Signal, Receiver, Any]] = []

    def connect(self, *signals: Signal | str, sender: Any = ANY) -> None:
        """Hear ``signals`` (default: the eight standard ones) from ``sender`` (default: all)."""
        targets = [_signals.get(s) for s in signals] or _signals.standard_signals()
        for signal in targets:
            connected = [(sig, snd) for sig, _, snd in self._connections if sig is signal]
            if (signal, ANY) in connected or (signal, sender) in connected:
                continue  # already hears this sender: connecting again would deliver twice
            if sender is ANY:  # hears everyone from now on: drop the narrower connections
                self._disconnect(lambda sig, snd: sig is signal)
            receiver = self._receiver_for(signal.name)
            signal.connect(receiver, sender=sender, weak=False)
            self._connections.append((signal, receiver, sender))

    def disconnect(self, sender: Any = None) -> None:
        """Stop listening: to ``sender`` only, or (None) to every connection made."""
        self._disconnect(lambda sig, snd: sender is None or snd == sender)

    def _disconnect(self, which: Callable[[Signal, Any], bool]) -> None:
        keep = []
        for signal, receiver, snd in self._connections:
            if which(signal, snd):
                signal.disconnect(receiver, sender=snd)
            else:
                keep.append((signal, receiver, snd))
        self._connections = keep

    def _receiver_for(self, event_type: str) -> Receiver:
        submit, reject, max_bytes = self._submit, self._reject, self._max_event_bytes
        normal = Priority.NORMAL

        def receive(sender: Any, **kwargs: Any) -> bool:
            # the hot path of every signal send: the common case (none of the special keys,
            # a str sender) costs four dict look-ups and the event itself
            named = sender.__class__ is str  # a plain name: no attributes to look for
            source = kwargs.pop("source", None) if "source" in kwargs else None
            if source is None and not named:
                source = getattr(sender, "event_source", None)
            priority = kwargs.pop("priority") if "priority" in kwargs else normal
            if "use_batching" in kwargs:
                batch = kwargs.pop("use_batching") is not False
            else:
                batch = named or getattr(sender, "use_batching", True) is not False
            data: Mapping[str, Any] = kwargs
            if "data" in kwargs:
                extra = kwargs.pop("data")
                if isinstance(extra, Mapping):
                    data = {**extra, **kwargs}
                elif extra is not None:  # not a dict: keep it as an ordinary field called "data"
                    data = {**kwargs, "data": extra}
            try:
                event = build_event(event_type, data, source,
                                    sender if named and sender else sender_name(sender),
                                    priority, max_bytes)
            except (TypeError, ValueError) as exc:
                reject(event_type, sender, exc)
                return False
            return submit(event, batch)

        receive.__qualname__ = f"EventBatcher.receive[{event_type}]"
        return receive
