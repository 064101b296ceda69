"""Pictures of segmentation results: mask overlays and similarity heatmaps.

numpy + PIL only, so scripts without mmengine can draw too; the mmengine
hook :class:`plugins.mmdet_custom.engine.hooks.SemSegVisualizationHook` calls these.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

# Control points of a blue-cyan-yellow-red colour ramp for heatmaps.
_RAMP = np.array([[0, 0, 128], [0, 90, 255], [0, 220, 255],
                  [255, 230, 0], [255, 60, 0], [128, 0, 0]], np.float64)


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct RGB colours ``(K, 3)`` uint8; class 0 black (background)."""
    rng = np.random.default_rng(1)
    palette = rng.integers(40, 256, size=(num_classes, 3))
    palette[0] = 0
    return palette.astype(np.uint8)


def colorize_heatmap(values: np.ndarray,
                     value_range: Optional[Tuple[float, float]] = None
                     ) -> np.ndarray:
    """Map a 2-D float array to RGB ``(H, W, 3)`` uint8 with a colour ramp.

    Args:
        values (ndarray): ``(H, W)``.
        value_range (tuple, optional): ``(low, high)`` mapped to the ramp's
            ends; the array's own min/max when None.
    """
    low, high = value_range if value_range is not None else (
        float(values.min()), float(values.max()))
    t = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    pos = t * (len(_RAMP) - 1)
    idx = np.minimum(pos.astype(np.int64), len(_RAMP) - 2)
    frac = (pos - idx)[..., None]
    rgb = _RAMP[idx] * (1 - frac) + _RAMP[idx + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay_mask(image: np.ndarray, mask: np.ndarray, palette: np.ndarray,
                 alpha: float = 0.5, skip_index: Optional[int] = 0,
                 ignore_index: int = 255) -> np.ndarray:
    """Blend class colours into an RGB image.

    Args:
        image (ndarray): ``(H, W, 3)`` uint8 RGB.
        mask (ndarray): ``(H, W)`` class indices.
        palette (ndarray): ``(K, 3)`` uint8 RGB.
        alpha (float): colour weight. Defaults to 0.5.
        skip_index (int, optional): class left unpainted (background).
        ignore_index (int): label left unpainted.

    Returns:
        ndarray: ``(H, W, 3)`` uint8.
    """
    out = image.astype(np.float64).copy()
    paint = (mask != ignore_index) & (mask < len(palette))
    if skip_index is not None:
        paint &= mask != skip_index
    colors = palette[np.where(paint, mask, 0)].astype(np.float64)
    out[paint] = (1 - alpha) * out[paint] + alpha * colors[paint]
    return out.round().astype(np.uint8)


def overlay_heatmap(image: np.ndarray, values: np.ndarray, alpha: float = 0.5,
                    value_range: Optional[Tuple[float, float]] = None
                    ) -> np.ndarray:
    """Blend a colourised ``(H, W)`` heatmap into an RGB ``(H, W, 3)``
    image."""
    heat = colorize_heatmap(values, value_range).astype(np.float64)
    out = (1 - alpha) * image.astype(np.float64) + alpha * heat
    return out.round().astype(np.uint8)


def label_panel(panel: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of an RGB panel."""
    img = Image.fromarray(panel)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((0, 0), text)
    draw.rectangle((0, 0, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
    draw.text((2, 2), text, fill=(255, 255, 255))
    return np.asarray(img)


def tile_panels(panels: Sequence[np.ndarray], ncols: int = 4,
                gap: int = 2) -> np.ndarray:
    """Arrange equally sized RGB panels in a grid (white gaps)."""
    h, w = panels[0].shape[:2]
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    grid = np.full((nrows * h + (nrows - 1) * gap,
                    ncols * w + (ncols - 1) * gap, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        r, c = divmod(i, ncols)
        grid[r * (h + gap):r * (h + gap) + h,
             c * (w + gap):c * (w + gap) + w] = panel
    return grid


def draw_segmentation(image: np.ndarray, pred: np.ndarray,
                      gt: Optional[np.ndarray], palette: np.ndarray,
                      alpha: float = 0.5) -> np.ndarray:
    """``image | ground truth overlay | prediction overlay`` in one row."""
    panels = [label_panel(image, 'image')]
    if gt is not None:
        panels.append(label_panel(overlay_mask(image, gt, palette, alpha),
                                  'ground truth'))
    panels.append(label_panel(overlay_mask(image, pred, palette, alpha),
                              'prediction'))
    return tile_panels(panels, ncols=len(panels))


def draw_similarity_maps(image: np.ndarray, maps: np.ndarray,
                         class_names: Sequence[str], alpha: float = 0.6,
                         ncols: int = 4) -> np.ndarray:
    """One heatmap panel per class over the image, on a shared scale.

    Args:
        image (ndarray): ``(H, W, 3)`` uint8 RGB.
        maps (ndarray): ``(K, H, W)`` per-class similarity, already at image
            size.
        class_names (Sequence[str]): ``K`` names for the panel labels.
    """
    value_range = (float(maps.min()), float(maps.max()))
    panels = [
        label_panel(overlay_heatmap(image, m, alpha, value_range),
                    f'{name} [{m.min():.2f}, {m.max():.2f}]')
        for m, name in zip(maps, class_names)
    ]
    return tile_panels(panels, ncols=ncols)


def save_png(array: np.ndarray, path: str) -> None:
    """Write an RGB uint8 array as a PNG."""
    Image.fromarray(array).save(path)
