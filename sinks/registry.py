"""Find sinks by name: entry points of group ``timelapser_workers.sinks`` and register_sink().

::

    load_sink("sqlite:///events.db")                       # the URL's scheme names the sink
    load_sink("postgresql://app@db/app?table=job_events")
    load_sink("log")                                       # a bare name, options after '?'
    load_sink({"sink": "log", "logger": "app.events"})     # or a config dict
    register_sink("print", PrintSink)                      # at run time

A factory is a Sink class or any callable returning a Sink. If it has ``from_url(url, **options)``
it is given the whole URL (and a config dict's other keys as options); else it is called with
the options (from the URL query as text, or from the config dict as they are).

Loading is lazy: an entry point is imported only when its sink is asked for, so one broken
plugin breaks only itself, with an error naming the entry point and its distribution. Two
entry points of one name from different places are reported as a conflict, never shadowed.
"""

from __future__ import annotations

import dataclasses
import inspect
import importlib.metadata as md
import logging
import re
import threading
from typing import Any, Callable, Mapping, cast
from urllib.parse import parse_qsl, urlsplit

from timelapser_workers.contract import Sink
from timelapser_workers.sinks.options import parse_options, redact_url
from timelapser_workers.errors import SinkLoadError

__all__ = ["ENTRY_POINT_GROUP", "SinkInfo", "load_sink", "register_sink", "unregister_sink", "available_sinks", "sink_factory"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "timelapser_workers.sinks"
SinkFactory = Callable[..., Sink]

_NAME = re.compile(r"[a-z][a-z0-9_.-]*")
# Schemes that name another sink: SQLAlchemy driver suffixes ("postgresql+psycopg2") are
# dropped first; "postgres" is the libpq spelling of "postgresql".
_ALIASES = {"postgres": "postgresql"}

_lock = threading.Lock()
_runtime: dict[str, tuple[SinkFactory, str]] = {}


@dataclasses.dataclass(frozen=True)
class SinkInfo:
    """One way to get a sink: its name, what provides it, and where that comes from."""

    name: str
    target: str  # "module:attr" of an entry point, or the factory's qualified name
    origin: str  # "timelapser-workers 0.1.0 (entry point)" or "register_sink()"
    entry_point: md.EntryPoint | None = None
    factory: SinkFactory | None = None

    def load(self) -> SinkFactory:
        """Import the factory (entry points) or return it (register_sink); SinkLoadError if broken."""
        if self.factory is not None:
            return self.factory
        assert self.entry_point is not None
        try:
            factory = self.entry_point.load()
        except Exception as exc:
            raise SinkLoadError(
                f"sink {self.name!r}: entry point '{self.entry_point.name} = {self.target}' "
                f"of distribution {self.origin} failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(factory):
            raise SinkLoadError(
                f"sink {self.name!r}: entry point '{self.entry_point.name} = {self.target}' of "
                f"distribution {self.origin} is a {type(factory).__name__}, not a Sink class or factory"
            )
        return cast(SinkFactory, factory)


def _dist_label(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown distribution)"
    return f"{dist.metadata['Name']} {dist.version}"


def _discover() -> dict[str, list[SinkInfo]]:
    """Every entry point of the group, by name (read fresh: installing a plugin needs no restart)."""
    found: dict[str, list[SinkInfo]] = {}
    seen: set[tuple[str, str, str]] = set()
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        origin = _dist_label(ep)
        key = (ep.name, ep.value, origin)
        if key in seen:  # the same distribution seen twice on sys.path (an editable install)
            continue
        seen.add(key)
        found.setdefault(ep.name, []).append(SinkInfo(ep.name, ep.value, origin, entry_point=ep))
    return found


def available_sinks() -> list[SinkInfo]:
    """Every sink that can be loaded, sorted by name; a name listed twice is a conflict."""
    found = _discover()
    with _lock:
        for name, (factory, origin) in _runtime.items():
            found.setdefault(name, []).insert(0, SinkInfo(name, _qualname(factory), origin, factory=factory))
    return [info for name in sorted(found) for info in found[name]]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"sink name {name!r} is not valid: use lower-case letters, digits, '_', '.' or '-', "
            "starting with a letter (e.g. 'sqlite', 'my_sink')"
        )
    return name


def register_sink(name: str, factory: SinkFactory, *, replace: bool = False) -> None:
    """Make ``name`` load ``factory`` in this process (it wins over an entry point of that name).

    Registering a name that is already registered, or that an entry point provides, raises
    ValueError unless ``replace=True``: a name is never shadowed by accident.
    """
    _check_name(name)
    if not callable(factory):
        raise TypeError(f"register_sink({name!r}, ...): factory {factory!r} is not callable")
    with _lock:
        taken = name in _runtime
    if not replace:
        providers = [i.origin for i in _discover().get(name, [])]
        if taken:
            providers.insert(0, f"register_sink() ({_qualname(_runtime[name][0])})")
        if providers:
            raise ValueError(
                f"sink name {name!r} is already provided by {', '.join(providers)}; "
                "pick another name or pass replace=True"
            )
    with _lock:
        _runtime[name] = (factory, "register_sink()")


def unregister_sink(name: str) -> None:
    """Forget a sink registered with register_sink (entry points are not affected)."""
    with _lock:
        _runtime.pop(name, None)


def sink_factory(name: str) -> SinkFactory:
    """The factory for ``name``; SinkLoadError if unknown, ambiguous or broken."""
    with _lock:
        runtime = _runtime.get(name)
    if runtime is not None:
        return runtime[0]
    candidates = _discover().get(name, [])
    if not candidates:
        known = sorted({i.name for i in available_sinks()})
        raise SinkLoadError(f"no sink named {name!r}; available: {', '.join(known) or 'none'}")
    if len({(i.target) for i in candidates}) > 1:
        listed = "; ".join(f"{i.origin}: {i.target}" for i in candidates)
        raise SinkLoadError(
            f"sink name {name!r} is provided by more than one entry point ({listed}); "
            f"uninstall one, or choose with register_sink({name!r}, factory, replace=True)"
        )
    return candidates[0].load()


def _scheme(spec: str) -> tuple[str, str | None]:
    """(sink name, url or None) for ``spec``: a URL with ``://`` or a bare name with options."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        base = scheme.split("+", 1)[0]
        return _ALIASES.get(base, base), spec
    name = spec.split("?", 1)[0].strip().lower()
    return _ALIASES.get(name, name), None


def load_sink(spec: str | Mapping[str, Any], **options: Any) -> Sink:
    """Build a sink from a URL, a name (``"log?logger=app"``) or a config dict.

    A config dict names its sink by ``"url"`` (the URL's scheme picks the sink) or by
    ``"sink"``; its other keys are options. ``options`` given here are added (a key given twice
    is an error). Raises SinkLoadError naming the spec and what went wrong.
    """
    if isinstance(spec, Mapping):
        config = dict(spec)
        url = config.pop("url", None)
        name = config.pop("sink", None)
        if url is None and name is None:
            raise SinkLoadError(f"sink config {dict(spec)!r} has neither 'url' nor 'sink'; give one")
        if url is not None and not isinstance(url, str):
            raise SinkLoadError(f"sink config 'url' must be a string, got {url!r}")
        if name is not None and not isinstance(name, str):
            raise SinkLoadError(f"sink config 'sink' must be a string, got {name!r}")
        text = url if url is not None else name
        assert text is not None
        twice = set(config) & set(options)
        if twice:
            raise SinkLoadError(f"option(s) {', '.join(sorted(twice))} given in the config and as arguments")
        options = {**config, **options}
        where = redact_url(repr(dict(spec)))  # no password in an error, a log line or stats
    elif isinstance(spec, str):
        text, where = spec, redact_url(repr(spec))
    else:
        raise SinkLoadError(f"load_sink takes a URL, a sink name or a config dict, got {spec!r}")
    name, url = _scheme(text)
    factory = sink_factory(name)
    failed: Exception | None = None
    try:
        sink = _build(factory, name, text, url, options)
    except SinkLoadError:
        raise
    except (TypeError, ValueError) as exc:
        failed = exc
    if failed is not None:
        said = str(failed)
        if redact_url(said) == said:
            raise SinkLoadError(f"cannot build sink {name!r} from {where}: {said}") from failed
        # raised outside the except block: neither cause nor context keeps the password
        raise SinkLoadError(f"cannot build sink {name!r} from {where}: {redact_url(said)}")
    if not callable(getattr(sink, "send", None)):
        raise SinkLoadError(f"sink {name!r} factory {_qualname(factory)} returned {sink!r}, which has no send(batch)")
    logger.debug("loaded sink %r from %s", getattr(sink, "name", name), where)
    return sink


def _build(factory: SinkFactory, name: str, text: str, url: str | None, options: dict[str, Any]) -> Sink:
    from_url = getattr(factory, "from_url", None)
    if callable(from_url):
        return from_url(text if url is None else url, **options)  # type: ignore[no-any-return]
    query = urlsplit(text).query if url is not None else (text.split("?", 1)[1] if "?" in text else "")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    given = dict(pairs)
    if len(given) != len(pairs):
        raise ValueError(f"an option is given twice in {text!r}")
    twice = set(given) & set(options)
    if twice:
        raise ValueError(f"option(s) {', '.join(sorted(twice))} given both in {text!r} and as arguments")
    spec = _option_spec(factory)
    if spec is not None:  # typed from the factory's own defaults: "false" must not become True
        given = parse_options(spec, given, where=text)
    return factory(**given, **options)


def _option_spec(factory: SinkFactory) -> dict[str, type] | None:
    """name -> type for the factory's keyword parameters, from their defaults' types (str when
    there is no default); None when it takes **kwargs (it checks its own options then)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    spec: dict[str, type] = {}
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            default = p.default
            spec[p.name] = type(default) if isinstance(default, (bool, int, float)) else str
    return spec


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
