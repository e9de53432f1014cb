"""SVG rendering of stroke-3 sketches (returns strings; writing files is the caller's business)."""

from __future__ import annotations

from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np

from model.strokes import bounds, to_polylines


def _paths(strokes3: np.ndarray, box: float, offset_x: float, offset_y: float, padding: float,
           color: str, stroke_width: float) -> list[str]:
    min_x, max_x, min_y, max_y = bounds(strokes3)
    extent = max(max_x - min_x, max_y - min_y, 1e-6)
    scale = (box - 2 * padding) / extent
    # Centre the sketch in its box.
    shift_x = offset_x + padding + ((box - 2 * padding) - (max_x - min_x) * scale) / 2 - min_x * scale
    shift_y = offset_y + padding + ((box - 2 * padding) - (max_y - min_y) * scale) / 2 - min_y * scale
    out = []
    for line in to_polylines(strokes3):
        pts = line * scale + np.array([shift_x, shift_y])
        d = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        if len(pts) == 1:  # A dot: a zero-length segment still draws with round caps.
            d += f" L{pts[0, 0]:.1f},{pts[0, 1]:.1f}"
        out.append(f'<path d="{d}" fill="none" stroke="{escape(color)}" stroke-width="{stroke_width}" '
                   'stroke-linecap="round" stroke-linejoin="round"/>')
    return out


def sketch_svg(strokes3: np.ndarray, size: float = 256, padding: float = 10, color: str = "black",
               stroke_width: float = 2.0, background: str | None = "white") -> str:
    """One sketch `[n, 3]` (stroke-3, any units) scaled to fit a `size` x `size` SVG."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
             f'viewBox="0 0 {size} {size}">']
    if background:
        parts.append(f'<rect width="100%" height="100%" fill="{escape(background)}"/>')
    parts += _paths(np.asarray(strokes3), size, 0, 0, padding, color, stroke_width)
    parts.append("</svg>")
    return "\n".join(parts)


def grid_svg(sketches: Sequence[np.ndarray], columns: int = 5, cell: float = 128, padding: float = 8,
             color: str = "black", stroke_width: float = 1.5, labels: Sequence[str] | None = None) -> str:
    """A grid of stroke-3 sketches, each scaled into its own `cell` x `cell` box, row-major."""
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if labels is not None and len(labels) != len(sketches):
        raise ValueError(f"{len(labels)} labels for {len(sketches)} sketches")
    rows = max(1, -(-len(sketches) // columns))
    width, height = columns * cell, rows * cell
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">', '<rect width="100%" height="100%" fill="white"/>']
    for i, sketch in enumerate(sketches):
        ox, oy = (i % columns) * cell, (i // columns) * cell
        parts.append(f'<rect x="{ox}" y="{oy}" width="{cell}" height="{cell}" fill="none" stroke="#ddd"/>')
        parts += _paths(np.asarray(sketch), cell, ox, oy, padding, color, stroke_width)
        if labels is not None:
            parts.append(f'<text x="{ox + 4}" y="{oy + cell - 4}" font-size="10" fill="#888">'
                         f'{escape(str(labels[i]))}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
