"""Shared by the examples: sample frames drawn with Pillow, and an in-process job inbox (the
one the demo's workers use: a thread-safe queue that ThreadWorker.fetch_jobs takes from)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from timelapser_workers.app.demo_workers import Inbox

__all__ = ["Inbox", "make_frame", "make_sample_frames"]


def make_frame(path: Path, seed: int, size: tuple[int, int] = (640, 480)) -> Path:
    """Draw a plausible camera frame (sky, ground, sun, noise) and save it as JPEG."""
    rng = random.Random(seed)
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    w, h = size
    horizon = int(h * (0.55 + 0.1 * rng.random()))
    for y in range(h):
        if y < horizon:
            t = y / horizon
            color = (int(90 + 80 * t), int(140 + 60 * t), 235)
        else:
            t = (y - horizon) / max(1, h - horizon)
            color = (int(60 - 30 * t), int(120 - 50 * t), int(40 - 20 * t))
        draw.line([(0, y), (w, y)], fill=color)
    sx, sy = rng.randrange(w), rng.randrange(horizon // 2 + 1)
    draw.ellipse([sx - 25, sy - 25, sx + 25, sy + 25], fill=(255, 230, 120))
    for _ in range(300):
        x, y = rng.randrange(w), rng.randrange(h)
        draw.point((x, y), fill=(rng.randrange(256),) * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=80)
    return path


def make_sample_frames(directory: Path, count: int) -> list[Path]:
    """``count`` frames in ``directory`` (frame_0000.jpg ...)."""
    return [make_frame(directory / f"frame_{i:04d}.jpg", seed=i) for i in range(count)]
