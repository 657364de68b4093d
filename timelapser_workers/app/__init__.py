"""The application layer: the ``timelapser-workers`` command line, the demo (its own workers
and frames, so it runs from an installed package) and the dashboard's web app. Users of the
library, on top of it; nothing in the core or the sinks imports from here."""

__all__ = ["cli", "demo", "demo_workers", "frames", "dashboard"]
