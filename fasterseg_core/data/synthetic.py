"""Procedural street scenes: a dataset that needs no download, for smoke runs and as a zero-download fallback.

Each scene is drawn in one-point perspective: a horizon and vanishing point, a road with dashed lane
markings between two tiled sidewalks, building facades with window grids along both sides (their tops
run towards the vanishing point), sky with clouds above, and trees, poles, cars and people standing on
the ground plane, sized by their distance and painted far to near. Every surface has its own colour
range and texture, so a small network can learn the classes from appearance and context.

Classes: the Cityscapes train-id table (``labels.CITYSCAPES``, 19 classes, 255 = ignore), of which the
scenes use road 0, sidewalk 1, building 2, pole 5, vegetation 8, sky 10, person 11 and car 13; the other
train ids never occur (their IoU is NaN when a model does not predict them). Sharing the Cityscapes
table lets the paper's 19-class networks run on these scenes unchanged.

Item ``i`` of a set is a pure function of ``(seed, i)``; nothing is cached or read from disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fasterseg_core.data.base import SegmentationDataset, Transform
from fasterseg_core.data.labels import CITYSCAPES

ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 5, 8, 10, 11, 13
USED_TRAIN_IDS = (ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, SKY, PERSON, CAR)


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [-1, 1], (h, w) float32, features about ``cell`` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = torch.from_numpy(rng.uniform(-1, 1, (1, 1, gh, gw)).astype(np.float32))
    return torch.nn.functional.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[
        0, 0
    ].numpy()


def _texture(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, amp: float, cell: float
) -> np.ndarray:
    """(h, w, 3) float32 colour field: ``base`` RGB modulated by two octaves of noise."""
    n = _noise(rng, h, w, cell) + 0.5 * _noise(rng, h, w, cell / 4)
    return np.clip(base[None, None, :] * (1 + amp * n[..., None]), 0, 255)


class _Canvas:
    """Colour image and label map that layers are painted onto, back to front."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.rgb = np.zeros((h, w, 3), dtype=np.float32)
        self.label = np.full((h, w), SKY, dtype=np.uint8)
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def paint(self, mask: np.ndarray, color: np.ndarray, train_id: int) -> None:
        """Full-image layer: ``mask`` (H, W) bool, ``color`` (H, W, 3) or (3,)."""
        self.rgb[mask] = color[mask] if color.ndim == 3 else color
        self.label[mask] = train_id

    def paint_box(
        self,
        y0: float,
        y1: float,
        x0: float,
        x1: float,
        color: np.ndarray,
        train_id: int,
        shape: str = "rect",
    ) -> None:
        """Axis-aligned box (or the ellipse inscribed in it), clipped to the image."""
        r0, r1 = max(0, int(np.floor(y0))), min(self.h, int(np.ceil(y1)))
        c0, c1 = max(0, int(np.floor(x0))), min(self.w, int(np.ceil(x1)))
        if r0 >= r1 or c0 >= c1:
            return
        yy, xx = self.yy[r0:r1, c0:c1] + 0.5, self.xx[r0:r1, c0:c1] + 0.5
        if shape == "ellipse":
            cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask = (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)
        rgb = self.rgb[r0:r1, c0:c1]
        rgb[mask] = color[r0:r1, c0:c1][mask] if color.ndim == 3 else color
        self.label[r0:r1, c0:c1][mask] = train_id


@dataclass(frozen=True)
class _Street:
    """A scene's ground-plane geometry: horizon row, vanishing column, lateral slopes (px per row below the
    horizon) of the road, its drift and the sidewalks, and the lane width used for object sizes."""

    yh: float
    vx: float
    d: np.ndarray  # distance below the horizon ∝ 1 / depth, per pixel
    road_half: float
    drift: float
    side: float

    @property
    def lane(self) -> float:
        return self.road_half / 2  # half the road ≈ one lane

    @property
    def centre(self) -> np.ndarray:
        return self.vx + self.drift * self.d  # the street axis c(y)


def render_street_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: sky, facades, road and sidewalks, then objects from far to near.

    Args:
        rng: the scene's random generator (all randomness comes from it, drawn in a fixed order).
        h, w: image size in pixels.

    Returns:
        image (h, w, 3) uint8 RGB and label (h, w) uint8 Cityscapes train ids.
    """
    cv = _Canvas(h, w)
    yh = rng.uniform(0.33, 0.5) * h  # horizon row
    vx = rng.uniform(0.35, 0.65) * w  # vanishing point column
    d = np.maximum(cv.yy - yh, 0)
    # Ground plane geometry, as lateral slopes: a point at lateral offset X lies at column vx + X·d.
    road_half = rng.uniform(0.25, 0.45) * w / (h - yh)
    drift = rng.uniform(-0.3, 0.3) * road_half  # the road's centre line is not always straight ahead
    street = _Street(yh, vx, d, road_half, drift, road_half * rng.uniform(0.3, 0.7))
    _paint_sky(cv, rng, street)
    _paint_facades(cv, rng, street)
    _paint_ground(cv, rng, street)
    _paint_objects(cv, rng, street)
    # Global light level and sensor noise.
    rgb = cv.rgb * rng.uniform(0.75, 1.15) + rng.normal(0, 3, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), cv.label


def _paint_sky(cv: _Canvas, rng: np.random.Generator, st: _Street) -> None:
    """Sky: vertical gradient plus clouds."""
    h, w = cv.label.shape
    top, horizon = rng.uniform([40, 90, 160], [90, 140, 220]), rng.uniform([160, 180, 200], [220, 230, 245])
    t = np.clip(cv.yy / max(st.yh, 1), 0, 1)[..., None]
    sky = top * (1 - t) + horizon * t
    clouds = np.clip(_noise(rng, h, w, w / 6), 0, 1)[..., None] * rng.uniform(0, 1.2)
    cv.rgb[:] = np.clip(sky + clouds * (255 - sky), 0, 255)


def _paint_facades(cv: _Canvas, rng: np.random.Generator, st: _Street) -> None:
    """Building facades on both sides of the street axis c(y) = vx + drift·d.

    In a column at u = |x − c| a facade spans rows [yh − u·k_top, yh + u / outer): its ground line is the
    sidewalks' outer edge. Buildings change every few depth units (depth ∝ 1/u) and each has its own height
    and colour.
    """
    h, w = cv.label.shape
    yy, xx, yh, centre = cv.yy, cv.xx, st.yh, st.centre
    outer = st.road_half + st.side
    for sign in (-1, 1):
        u = np.maximum(sign * (xx - centre), 1e-3)
        depth = 1.0 / u
        edges = np.cumsum(rng.uniform(0.4, 1.5, 24)) / (0.5 * w)  # building boundaries in depth
        idx = np.minimum(np.searchsorted(edges, depth), 24)
        k_top = rng.uniform(0.3, 1.6, 25)[idx] / outer
        ground = yh + u / outer
        facade = (sign * (xx - centre) > 0) & (yy >= yh - u * k_top) & (yy < ground)
        color = rng.uniform([90, 70, 60], [200, 180, 160], (25, 3))[idx]
        color = color * (1 + 0.12 * _noise(rng, h, w, 6)[..., None])
        # Windows: a grid in (depth, height-above-ground) facade coordinates.
        height = (ground - yy) / u * outer
        wz, wy = rng.uniform(0.4, 0.9) * w, rng.uniform(4, 8)
        window = (np.mod(depth * wz, 1) < 0.55) & (np.mod(height * wy, 1) < 0.5) & (height > 0.4 / wy)
        color[window] = color[window] * 0.35 + rng.uniform([20, 30, 40], [60, 80, 110])
        cv.paint(facade, np.clip(color, 0, 255).astype(np.float32), BUILDING)


def _paint_ground(cv: _Canvas, rng: np.random.Generator, st: _Street) -> None:
    """Road (textured, with a dashed centre line) and sidewalks (tiles, kerb), below the horizon."""
    h, w = cv.label.shape
    d = st.d
    lat = np.abs(cv.xx - st.centre)
    below = cv.yy > st.yh
    road = below & (lat <= st.road_half * d)
    walk = below & ~road & (lat <= (st.road_half + st.side) * d)
    road_rgb = _texture(rng, h, w, rng.uniform(60, 110) * np.ones(3) + rng.uniform(-8, 8, 3), 0.15, 3)
    depth_row = (h - st.yh) / np.maximum(d, 1e-3)  # 1 at the bottom row, growing towards the horizon
    dash = (lat < 0.06 * st.lane * d) & (np.mod(depth_row * rng.uniform(0.4, 0.7), 1) < 0.5)
    road_rgb[dash] = rng.uniform(210, 250)
    cv.paint(road, road_rgb, ROAD)
    walk_rgb = _texture(rng, h, w, rng.uniform([130, 110, 100], [190, 175, 170]), 0.1, 4)
    tiles = np.mod(depth_row * rng.uniform(2, 4), 1) < 0.12
    kerb = lat <= (st.road_half + 0.08 * st.side) * d
    walk_rgb[tiles | kerb] *= 0.8
    cv.paint(walk, walk_rgb, SIDEWALK)


def _paint_objects(cv: _Canvas, rng: np.random.Generator, st: _Street) -> None:
    """Trees, poles, cars and people standing on the ground, painted far (small d) to near."""
    h, w = cv.label.shape
    ground = h - st.yh
    objects = []
    for _ in range(rng.integers(0, 4)):
        objects.append(("tree", rng.uniform(0.05, 1.0) * ground, rng.choice([-1, 1])))
    for _ in range(rng.integers(0, 4)):
        objects.append(("pole", rng.uniform(0.05, 1.0) * ground, rng.choice([-1, 1])))
    for _ in range(rng.integers(1, 6)):
        objects.append(("car", rng.uniform(0.08, 1.15) * ground, rng.uniform(-0.8, 0.8)))
    for _ in range(rng.integers(0, 6)):
        objects.append(("person", rng.uniform(0.08, 1.1) * ground, rng.choice([-1, 1])))
    objects.sort(key=lambda o: o[1])
    leaf = _texture(rng, h, w, rng.uniform([40, 90, 20], [90, 150, 60]), 0.35, 2.5)
    for kind, dist, where in objects:
        # ground row, street axis, lane width (px) at this distance
        yb, c, s = st.yh + dist, st.vx + st.drift * dist, st.lane * dist
        if kind == "tree":
            x = c + where * (st.road_half + st.side * rng.uniform(0.6, 0.95)) * dist
            cv.paint_box(yb - 1.2 * s, yb, x - 0.05 * s, x + 0.05 * s, np.array([90, 60, 40.0]), VEGETATION)
            cr = rng.uniform(0.4, 0.7) * s
            cv.paint_box(yb - 1.2 * s - 1.4 * cr, yb - 0.9 * s, x - cr, x + cr, leaf, VEGETATION, "ellipse")
        elif kind == "pole":
            x = c + where * (st.road_half + st.side * 0.12) * dist
            pw = max(0.04 * s, 0.6)
            cv.paint_box(yb - 2.0 * s, yb, x - pw, x + pw, rng.uniform(90, 150) * np.ones(3), POLE)
        elif kind == "car":
            _paint_car(cv, rng, yb, c + where * st.road_half * dist, 0.85 * s)
        else:  # person on a sidewalk
            _paint_person(cv, rng, yb, c + where * (st.road_half + st.side * rng.uniform(0.2, 0.8)) * dist, s)


def _paint_car(cv: _Canvas, rng: np.random.Generator, yb: float, x: float, cw: float) -> None:
    """A car of width ``cw`` standing at row ``yb``, centred at column ``x``: body, cabin, window, wheels,
    lights."""
    body = rng.uniform(20, 235, 3)
    cv.paint_box(yb - 0.55 * cw, yb - 0.12 * cw, x - cw / 2, x + cw / 2, body, CAR)
    cv.paint_box(yb - 0.85 * cw, yb - 0.5 * cw, x - 0.35 * cw, x + 0.35 * cw, body * 0.9, CAR)
    cv.paint_box(yb - 0.8 * cw, yb - 0.55 * cw, x - 0.3 * cw, x + 0.3 * cw, np.array([40, 50, 65.0]), CAR)
    for wx in (x - 0.35 * cw, x + 0.35 * cw):
        cv.paint_box(yb - 0.2 * cw, yb, wx - 0.1 * cw, wx + 0.1 * cw, np.array([15, 15, 15.0]), CAR)
    for lx in (x - 0.45 * cw, x + 0.45 * cw):
        cv.paint_box(yb - 0.45 * cw, yb - 0.37 * cw, lx - 0.04 * cw, lx + 0.04 * cw, np.array([200, 30, 30.0]), CAR)


def _paint_person(cv: _Canvas, rng: np.random.Generator, yb: float, x: float, s: float) -> None:
    """A person about one lane-unit ``s`` tall at row ``yb``, column ``x``: legs, shirt, head."""
    ph = rng.uniform(0.8, 1.0) * s
    shirt, trousers = rng.uniform(20, 240, 3), rng.uniform(10, 120, 3)
    skin = rng.uniform([120, 80, 60], [240, 200, 170])
    cv.paint_box(yb - 0.48 * ph, yb, x - 0.09 * ph, x - 0.01 * ph, trousers, PERSON)
    cv.paint_box(yb - 0.48 * ph, yb, x + 0.01 * ph, x + 0.09 * ph, trousers, PERSON)
    cv.paint_box(yb - 0.85 * ph, yb - 0.45 * ph, x - 0.12 * ph, x + 0.12 * ph, shirt, PERSON)
    cv.paint_box(yb - ph, yb - 0.84 * ph, x - 0.07 * ph, x + 0.07 * ph, skin, PERSON, "ellipse")


class SyntheticStreets(SegmentationDataset):
    """Procedural street scenes; items are (image float32 (3, H, W) normalised, label int64 (H, W) train ids).

    Classes are the 19 Cityscapes train ids (see the module docstring for the 8 that occur).

    Args:
        num_images: number of scenes.
        hw: scene size (height, width) in pixels.
        seed: scenes of two sets with the same seed are identical; different seeds give different scenes.
        transform: joint transform (``fasterseg_core.data.transforms``); ``None`` = normalisation only.

    Attributes:
        files: empty (scenes are drawn, not read).
    """

    def __init__(
        self,
        num_images: int,
        hw: tuple[int, int] = (128, 256),
        seed: int = 0,
        transform: Transform | None = None,
    ):
        if num_images < 0 or min(hw) < 16:
            raise ValueError(f"need num_images >= 0 and both sides of hw >= 16, got {num_images}, {hw}")
        super().__init__([], CITYSCAPES, transform)
        self.num_images, self.hw, self.seed = num_images, (int(hw[0]), int(hw[1])), seed

    def __len__(self) -> int:
        return self.num_images

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"scene {index} out of range for {self.num_images} scenes")
        return render_street_scene(np.random.default_rng([self.seed, index]), *self.hw)
