"""Where the library keeps files of its own: the dead letter and the spool.

Both default to the user's state directory (``$XDG_STATE_HOME``, else ``~/.local/state``)
under ``timelapser-workers/``: an absolute place that does not move with the working directory.
A setting may say ``$XDG_STATE_HOME`` or ``~`` itself; :func:`expand` resolves both and makes
the path absolute. :func:`writable_dir` checks a directory when a batcher is built, so a bad
place fails there, naming the setting, instead of at the first dead letter.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from timelapser_workers.records import private_dir

__all__ = ["state_home", "expand", "writable_dir", "STATE_VARIABLE"]

STATE_VARIABLE = "$XDG_STATE_HOME"


def state_home() -> Path:
    """``$XDG_STATE_HOME`` if set to an absolute path (the XDG rule), else ``~/.local/state``."""
    value = os.environ.get("XDG_STATE_HOME", "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / ".local" / "state"


def expand(text: str | os.PathLike[str]) -> Path:
    """``text`` as an absolute path: a leading ``$XDG_STATE_HOME`` (or ``${XDG_STATE_HOME}``)
    is the state directory, a leading ``~`` the home directory, and a relative path is taken
    from the working directory now."""
    raw = os.fspath(text)
    for variable in (STATE_VARIABLE, "${XDG_STATE_HOME}"):
        if raw == variable or raw.startswith(variable + "/"):
            raw = str(state_home()) + raw[len(variable):]
            break
    return Path(os.path.abspath(os.path.expanduser(raw)))


def writable_dir(path: Path, setting: str, origin: str = "") -> Path:
    """Make ``path`` (0700, with its missing parents) and check that a file can be made in it;
    ValueError naming ``setting`` (and ``origin``, where the value came from) if not."""
    try:
        private_dir(path)
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is not a directory")
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(
            f"{setting}: cannot write in {str(path)!r}{origin} ({exc.strerror or exc}); give a "
            "directory this process can write to"
        ) from None
    return path
