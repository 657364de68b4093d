"""The application layer: the ``timelapser-workers`` command line and the demo. Users of the
library, on top of it; nothing in the core or the sinks imports from here."""

__all__ = ["cli", "demo"]
