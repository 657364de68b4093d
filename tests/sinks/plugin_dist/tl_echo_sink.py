"""EchoSink: keeps what it is sent, with a prefix, to show a third-party sink working."""

from typing import Sequence

from timelapser_workers import BaseSink, Event


class EchoSink(BaseSink):
    name = "echo"
    wants_aggregated = False
    received: list = []  # shared, so a test can see what a sink built by load_sink got

    def __init__(self, prefix: str = "echo") -> None:
        self.prefix = prefix

    def send(self, batch: Sequence[Event]) -> None:
        EchoSink.received.extend(f"{self.prefix}:{e.type}" for e in batch)
