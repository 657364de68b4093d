"""The demo's image work: draw a camera frame, shrink it to a thumbnail, stamp a caption on it.

With Pillow (``pip install 'timelapser-workers[examples]'``) frames are JPEG files drawn and
resized by Pillow, like the repository's examples/. Without it they are binary PPM files
drawn, subsampled and stamped in pure Python: slower per pixel, but the demo measures events,
transactions and browser messages, which do not depend on the image library, so it runs the
same way after a plain ``pip install timelapser-workers``. :data:`BACKEND` says which is used.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

__all__ = ["BACKEND", "SUFFIX", "make_frame", "make_thumbnail", "stamp_caption", "backend_note"]

_Image: Any
_ImageDraw: Any
try:
    from PIL import Image as _Image, ImageDraw as _ImageDraw
except ImportError:  # the demo runs without Pillow: pure-Python PPM frames
    _Image = _ImageDraw = None

#: "pillow" (JPEG frames) or "ppm" (pure Python)
BACKEND = "pillow" if _Image is not None else "ppm"
#: file suffix of the frames this backend writes
SUFFIX = ".jpg" if BACKEND == "pillow" else ".ppm"

_CAPTION_ROWS = 28


def backend_note() -> str:
    """One line for the user: which image backend the demo's workers use, and how to change it."""
    if BACKEND == "pillow":
        return "frames: JPEG through Pillow"
    return ("frames: Pillow is not installed, so the workers draw and shrink PPM frames in pure "
            "Python (the events are the same); for JPEG: pip install 'timelapser-workers[examples]'")


def _rows(size: tuple[int, int], seed: int) -> list[bytearray]:
    """Sky over ground with a sun, as rows of RGB bytes."""
    rng = random.Random(seed)
    w, h = size
    horizon = int(h * (0.55 + 0.1 * rng.random()))
    rows = []
    for y in range(h):
        t = y / horizon if y < horizon else (y - horizon) / max(1, h - horizon)
        color = ((int(90 + 80 * t), int(140 + 60 * t), 235) if y < horizon
                 else (int(60 - 30 * t), int(120 - 50 * t), int(40 - 20 * t)))
        rows.append(bytearray(bytes(color) * w))
    sx, sy, r = rng.randrange(w), rng.randrange(horizon // 2 + 1), max(2, w // 25)
    for y in range(max(0, sy - r), min(h, sy + r)):
        half = int((r * r - (y - sy) ** 2) ** 0.5)
        x0, x1 = max(0, sx - half), min(w, sx + half)
        rows[y][3 * x0:3 * x1] = bytes((255, 230, 120)) * (x1 - x0)
    return rows


def _write_ppm(path: Path, size: tuple[int, int], rows: list[bytearray], comment: str = "") -> None:
    header = b"P6\n" + (f"# {comment}\n".encode() if comment else b"") + f"{size[0]} {size[1]}\n255\n".encode()
    path.write_bytes(header + b"".join(rows))


def _read_ppm(path: Path) -> tuple[tuple[int, int], list[bytes]]:
    data = path.read_bytes()
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:  # magic, width, height, maxval; comments skipped
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b"P6" or fields[3] != b"255":
        raise ValueError(f"{path} is not an 8-bit binary PPM (P6) file")
    w, h = int(fields[1]), int(fields[2])
    pixels = data[pos + 1:]
    stride = 3 * w
    return (w, h), [pixels[y * stride:(y + 1) * stride] for y in range(h)]


def make_frame(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> Path:
    """Draw a plausible camera frame at ``path`` (its suffix replaced by :data:`SUFFIX`)."""
    path = path.with_suffix(SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _rows(size, seed)
    if _Image is None:
        _write_ppm(path, size, rows)
    else:
        _Image.frombytes("RGB", size, b"".join(rows)).save(path, "JPEG", quality=80)
    return path


def make_thumbnail(frame: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """Write ``<frame>.thumb<suffix>``, at most ``size``, beside ``frame``."""
    out = frame.with_suffix(".thumb" + SUFFIX)
    if _Image is not None:
        with _Image.open(frame) as image:
            image.thumbnail(size)
            image.save(out, "JPEG", quality=85)
        return out
    (w, h), rows = _read_ppm(frame)
    step = max(1, -(-w // size[0]), -(-h // size[1]))  # every step-th pixel of every step-th row
    small = [bytearray(b"".join(row[x:x + 3] for x in range(0, 3 * w, 3 * step))) for row in rows[::step]]
    _write_ppm(out, (len(small[0]) // 3, len(small)), small)
    return out


def stamp_caption(frame: Path, caption: str) -> Path:
    """Write ``<frame>.overlay<suffix>``: the frame with a black band and ``caption`` at the
    bottom (PPM: the band, and the caption as the file's comment line)."""
    out = frame.with_suffix(".overlay" + SUFFIX)
    if _Image is not None:
        with _Image.open(frame) as opened:
            image = opened.convert("RGB")
        draw = _ImageDraw.Draw(image)
        w, h = image.size
        draw.rectangle([0, h - _CAPTION_ROWS, w, h], fill=(0, 0, 0))
        draw.text((8, h - 22), caption, fill=(255, 255, 255))
        image.save(out, "JPEG", quality=85)
        return out
    (w, h), rows = _read_ppm(frame)
    band = bytes(3 * w)
    stamped = [bytearray(row if y < h - _CAPTION_ROWS else band) for y, row in enumerate(rows)]
    _write_ppm(out, (w, h), stamped, comment=caption.replace("\n", " "))
    return out
