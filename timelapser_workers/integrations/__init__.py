"""Integrations: the library put to work inside other frameworks: logging (log_handler,
log_context), metrics (metrics, and its exporters prometheus and otel), Django. Each module is
an application of the core and the sinks, imported only when asked for. ``prometheus`` and
``otel`` import their extra's package when imported (so they are left out of ``__all__``);
``django`` imports Django only when called."""

__all__ = ["log_handler", "log_context", "metrics", "django"]
