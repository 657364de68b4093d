"""Integrations: the library put to work inside other frameworks (logging, ...). Each module
is an application of the core and the sinks, imported only when asked for."""

__all__ = ["log_handler"]
