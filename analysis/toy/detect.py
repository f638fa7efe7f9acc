"""Object detection for the shapes world (`analysis.toy.scenes`): which objects a generated image shows, with
their colour, shape, size and position (`detect_objects`), and where each palette colour is (`colour_masks`).
The prompt-fidelity scorer (`analysis.toy.fidelity`) judges a prompt's stated attributes on these detections.

An image of any other size than 64x64 (the CLI and app accept sizes from 32 to 2048 px) is first resampled to the
shapes world's 64x64 canvas (PIL's bilinear resize, anti-aliased when shrinking), because every threshold below
(sizes in pixels, position anchors, templates) is stated on that canvas.

Method
------
1. **Background.** The per-channel median of the border pixels (one or two objects cover at most about
   a sixth of the border, so the median is the background colour).
2. **Foreground.** Image and background are converted to CIE Lab (`skimage.color.rgb2lab`); a pixel is
   foreground when its Lab distance (CIE76 delta E) from the background exceeds `FOREGROUND_DELTA_E`.
   Every object colour is at least ~70 delta E from every background, so additive noise does not leak
   in while pixels mostly covered by an object do. Specks and pinholes are removed
   (`skimage.morphology.remove_small_objects` / `remove_small_holes`).
3. **Colour.** Each foreground pixel is assigned to the nearest palette colour (`scenes.COLOURS`) in Lab,
   or to none when even the nearest is more than `MAX_PALETTE_DELTA_E` away (pixels mixed with the
   background or with a neighbouring object; the closest palette pair, red-orange, is 35 delta E apart).
   The assignment is then smoothed by a 3x3 majority vote, which removes isolated misassignments inside
   an object whose colour is a little off and gives unassigned foreground pixels their neighbours' colour.
4. **Objects.** Connected components per colour (`skimage.measure.label`, 8-connectivity); components
   smaller than `MIN_COMPONENT_PX` are dropped. Each component's outline is then re-cut at *half
   maximum*: blur mixes object and background linearly in RGB, so a pixel's RGB distance from the
   background is its coverage times the object's contrast (the component's `PLATEAU_PERCENTILE`-th
   percentile distance); pixels at >= `HALF_MAX` of it form the object, which undoes the growth or
   shrinkage a fixed threshold gives under blur. A 3x3 binary opening removes one-pixel spurs that noise
   attaches to the outline; holes are filled and the largest piece kept.
5. **Per object** (`skimage.measure.regionprops` on that mask):
   * shape from the *extent* (area / bounding-box area): square ~1.0, circle ~pi/4 = 0.785, triangle
     (apex up) ~0.5, split at `TRIANGLE_MAX_EXTENT` and `CIRCLE_MAX_EXTENT`. Blur rounds a small
     triangle into something with a circle's extent but it stays bottom-heavy, so the area ratio of the
     upper and lower halves of the box (1/3 for a triangle, 1 for a circle or square) below
     `TRIANGLE_MAX_TOP_BOTTOM` also means triangle;
   * size from the longer bounding-box side: `scenes.SIZES` draws 12 vs 22 px, the threshold is the
     midpoint, 17 px;
   * position: the anchor of `scenes.POSITIONS` nearest to the centre of the bounding box (a triangle's
     centroid is several pixels below its nominal centre; its box centre is not).
   **Occlusion.** Two large objects at the center and at an edge anchor can overlap by a few pixels (22 px
   objects, anchors 19 px apart, +-2 px jitter), and the one drawn later hides part of the other, e.g. a
   square with a corner bitten off reads as a circle by extent. So an object that comes within
   `OCCLUSION_GAP_PX` of another is judged instead by the best-fitting template: the exact masks
   `scenes.render` draws for every shape and size at centres within `TEMPLATE_SEARCH_PX` of the visible
   box centre, scored by IoU over the pixels *not* covered by the other objects (a hidden corner counts
   neither for nor against a template). A component lying almost entirely in another object's mixed
   edge ring is a blur artefact and is dropped.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, measure, morphology

from analysis.toy import scenes

FOREGROUND_DELTA_E = 25.0  # Lab distance from the background above which a pixel is foreground
MAX_PALETTE_DELTA_E = 45.0  # a foreground pixel further than this from every palette colour is unassigned
MIN_COMPONENT_PX = 15  # smaller connected components are noise
MIN_SPECK_PX = 4  # foreground specks smaller than this are removed before colouring
TRIANGLE_MAX_EXTENT = 0.66  # extent below: triangle (0.5 ideal)
CIRCLE_MAX_EXTENT = 0.89  # extent below (and not a triangle): circle (0.785 ideal); above: square (1.0)
TRIANGLE_MAX_TOP_BOTTOM = 0.75  # area of the box's upper half / lower half below: triangle (1/3 ideal)
PLATEAU_PERCENTILE = 90  # the object's contrast: this percentile of its pixels' distance from the background
HALF_MAX = 0.5  # outline: pixels at least this fraction of the plateau contrast
OCCLUSION_GAP_PX = 2  # objects whose outlines come this close may cover one another
TEMPLATE_SEARCH_PX = 5  # template centres tried: the visible box centre +- this many pixels
SIZE_THRESHOLD_PX = (scenes.SIZES["small"] + scenes.SIZES["large"]) / 2

_PALETTE_NAMES = tuple(scenes.COLOURS)
_PALETTE_LAB = color.rgb2lab(np.array([list(scenes.COLOURS.values())], dtype=np.uint8))[0]  # (K, 3)
_POSITION_NAMES = tuple(scenes.POSITIONS)
_POSITION_XY = np.array([scenes.POSITIONS[p] for p in _POSITION_NAMES], dtype=float)  # (P, 2) as (x, y)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max(initial=0.0) <= 1.0:
            image = image * 255.0
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image


def _on_canvas(image: np.ndarray) -> np.ndarray:
    """The image as (64, 64, 3) uint8: other sizes are resampled to the canvas the thresholds are set on."""
    image = _as_rgb_uint8(image)
    canvas = (scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)
    if image.shape[:2] == canvas:
        return image
    # Bilinear, widened to the scale factor when shrinking (PIL's resize anti-aliases): a pixel of the
    # canvas then mixes object and background by coverage, as the half-maximum outline expects.
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(canvas[::-1], Image.Resampling.BILINEAR))


def estimate_background(image: np.ndarray) -> np.ndarray:
    """The background colour (RGB, float) as the per-channel median of the border pixels."""
    image = _as_rgb_uint8(image)
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]], axis=0)
    return np.median(border.astype(float), axis=0)


def _remove_small(fn, mask: np.ndarray, size: int) -> np.ndarray:
    """`fn` (remove_small_objects / remove_small_holes) for pieces of fewer than `size` pixels, across
    scikit-image versions (0.26 renamed min_size / area_threshold to max_size, inclusive)."""
    try:
        return fn(mask, max_size=size - 1)
    except TypeError:
        kwarg = "min_size" if fn is morphology.remove_small_objects else "area_threshold"
        return fn(mask, **{kwarg: size})


def _classify_shape(extent: float, top_bottom_ratio: float) -> str:
    """Triangle / circle / square from the extent and the area ratio of the box's upper and lower halves."""
    # An apex-up triangle has a third of its lower half's area above the middle, a circle or square as
    # much as below; blur rounds a small triangle's corners (extent up to ~0.75) but keeps it bottom-heavy.
    if extent < TRIANGLE_MAX_EXTENT or top_bottom_ratio < TRIANGLE_MAX_TOP_BOTTOM:
        return "triangle"
    if extent < CIRCLE_MAX_EXTENT:
        return "circle"
    return "square"


def _nearest_position(x: float, y: float) -> str:
    d = np.hypot(_POSITION_XY[:, 0] - x, _POSITION_XY[:, 1] - y)
    return _POSITION_NAMES[int(np.argmin(d))]


def _colour_labels(lab: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Palette index per pixel (-1: background or unassigned), after a 3x3 majority vote."""
    k = len(_PALETTE_NAMES)
    one_hot = np.zeros(foreground.shape + (k,), dtype=float)
    pixels = lab[foreground]  # (N, 3)
    dist = np.linalg.norm(pixels[:, None, :] - _PALETTE_LAB[None, :, :], axis=-1)  # (N, K)
    nearest = np.argmin(dist, axis=-1)
    ok = dist[np.arange(len(nearest)), nearest] <= MAX_PALETTE_DELTA_E
    rows, cols = np.nonzero(foreground)
    one_hot[rows[ok], cols[ok], nearest[ok]] = 1.0
    votes = ndimage.uniform_filter(one_hot, size=(3, 3, 1), mode="constant")
    smoothed = np.argmax(votes, axis=-1)
    has_vote = votes.max(axis=-1) > 0
    return np.where(foreground & has_vote, smoothed, -1)


def _core_mask(region, contrast: np.ndarray) -> np.ndarray | None:
    """The half-maximum outline of one colour component, as a full-image boolean mask (None: too small)."""
    r0, c0, r1, c1 = region.bbox
    component = region.image_filled
    local = contrast[r0:r1, c0:c1]
    plateau = np.percentile(local[component], PLATEAU_PERCENTILE)
    core = component & (local >= HALF_MAX * plateau)
    # A 3x3 opening removes one-pixel spurs that noise attaches to the outline (they would stretch the
    # bounding box) and keeps square corners intact.
    core = ndimage.binary_opening(core, structure=np.ones((3, 3), dtype=bool))
    core_labels = measure.label(core, connectivity=2)
    if core_labels.max() == 0:
        return None
    # The largest piece of the half-maximum mask, holes filled.
    piece = max(measure.regionprops(core_labels), key=lambda r: r.area)
    if piece.area < MIN_COMPONENT_PX:
        return None
    mask = np.zeros(contrast.shape, dtype=bool)
    pr0, pc0, pr1, pc1 = piece.bbox
    mask[r0 + pr0 : r0 + pr1, c0 + pc0 : c0 + pc1] = piece.image_filled
    return mask


def _describe_mask(mask: np.ndarray) -> dict:
    """Shape, size and position of an unoccluded object from its mask (extent, box side, box centre)."""
    region = measure.regionprops(mask.astype(np.uint8))[0]
    min_row, min_col, max_row, max_col = region.bbox
    height, width = max_row - min_row, max_col - min_col
    area = int(region.area)
    extent = area / float(height * width)
    centroid_row, centroid_col = region.centroid
    box_centre_row = min_row + (height - 1) / 2.0
    box_centre_col = min_col + (width - 1) / 2.0
    half = height // 2
    top_bottom = region.image[:half].sum() / max(1, region.image[height - half :].sum())
    return {
        "colour": None,
        "shape": _classify_shape(extent, float(top_bottom)),
        "size": "large" if max(height, width) >= SIZE_THRESHOLD_PX else "small",
        "position": _nearest_position(box_centre_col, box_centre_row),
        "area": area,
        "centroid": (float(centroid_col), float(centroid_row)),
        "bbox": (int(min_row), int(min_col), int(max_row), int(max_col)),
        "extent": float(extent),
        "top_bottom": float(top_bottom),
        "occluded": False,
        "method": "extent",
    }


@lru_cache(maxsize=8192)
def _template(shape: str, size: str, cx: int, cy: int) -> np.ndarray:
    """The pixels `scenes.render` paints for a `shape` of `size` centred at (cx, cy) (read-only mask)."""
    anchor_x, anchor_y = scenes.POSITIONS["center"]
    obj = scenes.SceneObject("red", shape, size, "center", cx - anchor_x, cy - anchor_y)
    image = scenes.render(scenes.Scene((obj,), "white"))
    mask = (image != 255).any(axis=-1)
    mask.setflags(write=False)
    return mask


def _fit_template(mask: np.ndarray, hidden: np.ndarray) -> tuple[str, str, int, int, float]:
    """Best (shape, size, cx, cy, IoU) of the rendered templates against `mask`, ignoring `hidden` pixels.

    Used for an object another object may partly cover: the IoU is taken over the pixels not covered by
    the other objects, so a covered corner counts neither for nor against a template.
    """
    visible = ~hidden
    mask = mask & visible
    rows, cols = np.nonzero(mask)
    cy0 = int(round((rows.min() + rows.max()) / 2.0))
    cx0 = int(round((cols.min() + cols.max()) / 2.0))
    best = ("square", "small", cx0, cy0, -1.0)
    r = TEMPLATE_SEARCH_PX
    # Every candidate template lies within this window (half the large size plus the search radius).
    reach = r + scenes.SIZES["large"] // 2 + 1
    window = (slice(max(0, cy0 - reach), cy0 + reach + 1), slice(max(0, cx0 - reach), cx0 + reach + 1))
    mask, visible = mask[window], visible[window]
    for shape in scenes.SHAPES:
        for size in scenes.SIZES:
            for cy in range(cy0 - r, cy0 + r + 1):
                for cx in range(cx0 - r, cx0 + r + 1):
                    t = _template(shape, size, cx, cy)[window]
                    inter = np.count_nonzero(t & mask)
                    if inter == 0:
                        continue
                    iou = inter / np.count_nonzero((t | mask) & visible)
                    if iou > best[4]:
                        best = (shape, size, cx, cy, iou)
    return best


def colour_masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Per palette colour, the foreground pixels assigned to it (64x64 canvas; the first steps of
    `detect_objects`, without splitting a colour into objects): where each object of a prompt whose objects
    have distinct colours is."""
    image = _on_canvas(image)
    lab = color.rgb2lab(image)
    background_lab = color.rgb2lab(estimate_background(image)[None, None, :] / 255.0)[0, 0]
    foreground = np.linalg.norm(lab - background_lab, axis=-1) > FOREGROUND_DELTA_E
    labels = _colour_labels(lab, foreground)
    return {name: labels == k for k, name in enumerate(_PALETTE_NAMES)}


def detect_objects(image: np.ndarray) -> list[dict]:
    """Every object the image shows, largest first.

    Each is a dict: colour, shape, size, position (names from `scenes`), area (px), centroid (x, y),
    bbox (min_row, min_col, max_row, max_col; max exclusive), extent, occluded (touches another object),
    method ("extent" or "template": how shape/size/position were decided) and, for "template", fit_iou.
    Coordinates are on the 64x64 canvas whatever the image's size (see `_on_canvas`).
    """
    image = _on_canvas(image)
    lab = color.rgb2lab(image)
    background = estimate_background(image)
    background_lab = color.rgb2lab(background[None, None, :] / 255.0)[0, 0]
    foreground = np.linalg.norm(lab - background_lab, axis=-1) > FOREGROUND_DELTA_E
    foreground = _remove_small(morphology.remove_small_objects, foreground, MIN_SPECK_PX)
    foreground = _remove_small(morphology.remove_small_holes, foreground, 9)
    labels = _colour_labels(lab, foreground)
    # Blur mixes object and background linearly in RGB, so the RGB distance from the background is the
    # mixing fraction times the object's contrast: thresholding it at half the plateau recovers the
    # drawn outline (the "half maximum" edge).
    contrast = np.linalg.norm(image.astype(float) - background, axis=-1)

    found: list[tuple[str, np.ndarray]] = []
    for k, name in enumerate(_PALETTE_NAMES):
        mask = labels == k
        if mask.sum() < MIN_COMPONENT_PX:
            continue
        components = measure.label(mask, connectivity=2)
        for region in measure.regionprops(components):
            if region.area < MIN_COMPONENT_PX:
                continue
            core = _core_mask(region, contrast)
            if core is not None:
                found.append((name, core))

    near = morphology.disk(OCCLUSION_GAP_PX)
    # Another object's pixels and the ring of mixed pixels around them: what may hide part of an object.
    covers = [ndimage.binary_dilation(m) for _, m in found]
    objects: list[dict] = []
    for i, (name, mask) in enumerate(found):
        hidden = np.zeros_like(mask)
        for j in range(len(found)):
            if j != i:
                hidden |= covers[j]
        obj = _describe_mask(mask)
        obj["colour"] = name
        if (ndimage.binary_dilation(mask, structure=near) & hidden).any():
            if np.count_nonzero(mask & ~hidden) < MIN_COMPONENT_PX:
                continue  # a sliver along another object's edge (colours mixed by blur), not an object
            # Touches another object, which may cover part of it: judge it by the best-fitting template.
            shape, size, cx, cy, iou = _fit_template(mask, hidden)
            obj.update(shape=shape, size=size, position=_nearest_position(cx, cy), occluded=True,
                       method="template", fit_iou=float(iou))
        objects.append(obj)
    objects.sort(key=lambda o: -o["area"])
    return objects


__all__ = [
    "colour_masks",
    "detect_objects",
    "estimate_background",
]
