"""The shapes world: procedural 64x64 scenes with one or two objects and their captions.

A scene is plain data (`Scene`), rendered deterministically by `render`, captioned by `caption`.
`sample_scene(rng)` draws a scene from the training distribution; colour-shape pairs listed in
`HELD_OUT_PAIRS` never appear in it, so prompts that use them test compositional generalisation.

Worlds (issue 16, "a world where detail costs steps"). `WORLDS["flat"]` is the world every shipped model was
trained on: one or two flat objects on a flat background (its random draws are unchanged, so its datasets are
too). `WORLDS["detail"]` adds structure the caption does not state and a sampler must therefore invent and
finish: up to three objects, each shaded by a linear light gradient in a random direction, on a background
with a smooth random grain. Captions keep the same grammar ("... and ... and ..."), so tokenizer, judge text
and scorer read them unchanged; grain and shading stay far below the scorer's foreground and palette
thresholds (analysis/toy/detect.py). A scene carries its own detail (`Scene.grain_seed`, `SceneObject.shade`),
so `render` stays a pure function of the scene.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 12, "large": 22}  # side / diameter in pixels
# Object centres. A large centre object and a large edge object can overlap by a few pixels (the later one
# is drawn on top); the fidelity scorer handles the occlusion.
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (13, 32),
    "right": (51, 32),
    "top": (32, 13),
    "bottom": (32, 51),
    "center": (32, 32),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
# Light backgrounds, far from every object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "grey": (228, 228, 228),
    "cream": (250, 243, 222),
    "mint": (225, 245, 232),
    "sky": (225, 236, 250),
}
# Never seen in training, in any object of any scene.
HELD_OUT_PAIRS = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})

JITTER_PX = 2
TWO_OBJECT_PROB = 0.5


@dataclass(frozen=True)
class World:
    """How scenes are drawn. object_counts: (threshold, n) pairs; a uniform draw below the first threshold it is
    under gives n objects."""

    name: str
    object_counts: tuple[tuple[float, int], ...] = ((TWO_OBJECT_PROB, 2), (1.0, 1))
    grain_std: float = 0.0  # background grain: standard deviation in RGB levels (0 = flat)
    grain_sigma: float = 1.5  # its spatial smoothing (Gaussian sigma, pixels)
    shading: float = 0.0  # object brightness varies by +- this fraction across the object
    tile_strength: float = 0.0  # tiled texture: a dark cell multiplies the pixels under it by (1 - this)
    tile_prob: float = 0.35  # each cell is dark with this probability (below 1/2: the border median stays light)
    tile_px: int = 4  # cell side in pixels; 4 = one latent pixel of the 16x16 latent, aligned with it
    unstated: str = ""  # what the world draws that no caption says, in words (the app's reading note)


WORLDS = {
    "flat": World("flat"),
    "detail": World("detail", object_counts=((0.3, 3), (0.65, 2), (1.0, 1)), grain_std=10.0, grain_sigma=1.5,
                    shading=0.18, unstated="a smooth grain on the background and a light gradient on each object"),
    # Issue 16, second attempt: many caption-free coin flips at the latent's own scale (one per 4x4 cell, over
    # background and objects alike), each a visible step in brightness that a sampler must commit to.
    "tiles": World("tiles", object_counts=((0.3, 3), (0.65, 2), (1.0, 1)), shading=0.12, tile_strength=0.15,
                   unstated="a texture of 4 px cells, about a third of them darker, over the whole image, and a "
                            "light gradient on each object"),
}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    position: str
    dx: int = 0
    dy: int = 0
    shade: float = 0.0  # brightness varies +- shade across the object, along shade_angle
    shade_angle: float = 0.0  # radians; the light comes from this direction

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {POSITION_PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str = "white"
    grain_seed: int = 0  # background grain drawn from this seed
    grain_std: float = 0.0  # 0: a flat background
    grain_sigma: float = 1.5
    tile_strength: float = 0.0  # 0: no tiled texture; the cells are drawn from grain_seed
    tile_prob: float = 0.35
    tile_px: int = 4


def caption(scene: Scene) -> str:
    return " and ".join(obj.phrase() for obj in scene.objects)


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a stable order."""
    words: list[str] = ["a", "and"]
    words += list(SIZES) + list(COLOURS) + list(SHAPES)
    for phrase in POSITION_PHRASES.values():
        words += phrase.split()
    return list(dict.fromkeys(words))


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill=None) -> None:
    cx, cy = POSITIONS[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    half = SIZES[obj.size] / 2
    box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
    fill = COLOURS[obj.colour] if fill is None else fill
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 array."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    pixels = np.asarray(image, dtype=np.uint8).copy()
    if scene.grain_std <= 0 and scene.tile_strength <= 0 and not any(o.shade for o in scene.objects):
        return pixels  # the flat world: exactly what it always was
    return _add_detail(scene, pixels)


def _add_detail(scene: Scene, pixels: np.ndarray) -> np.ndarray:
    """Grain on the background, shading on each object (painted in drawing order, so occlusion holds)."""
    from scipy.ndimage import gaussian_filter

    out = pixels.astype(np.float32)
    owner = np.full(pixels.shape[:2], -1)
    for i, obj in enumerate(scene.objects):
        mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        _draw_object(ImageDraw.Draw(mask), obj, fill=255)
        owner[np.asarray(mask) > 0] = i
    if scene.grain_std > 0:
        noise = gaussian_filter(np.random.default_rng(scene.grain_seed).standard_normal((IMAGE_SIZE, IMAGE_SIZE)),
                                scene.grain_sigma)
        out[owner < 0] += (noise / noise.std() * scene.grain_std)[owner < 0, None]
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    for i, obj in enumerate(scene.objects):
        if not obj.shade:
            continue
        cx, cy = POSITIONS[obj.position][0] + obj.dx, POSITIONS[obj.position][1] + obj.dy
        along = ((xx - cx) * np.cos(obj.shade_angle) + (yy - cy) * np.sin(obj.shade_angle)) / (SIZES[obj.size] / 2)
        factor = 1.0 - obj.shade * np.clip(along, -1.0, 1.0)
        out[owner == i] *= factor[owner == i, None]
    if scene.tile_strength > 0:
        cells = IMAGE_SIZE // scene.tile_px
        dark = np.random.default_rng([scene.grain_seed, 1]).random((cells, cells)) < scene.tile_prob
        out *= (1.0 - scene.tile_strength * np.kron(dark, np.ones((scene.tile_px, scene.tile_px))))[..., None]
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def sample_object(rng: np.random.Generator, position: str, allow_held_out: bool = False) -> SceneObject:
    while True:
        colour = str(rng.choice(list(COLOURS)))
        shape = str(rng.choice(SHAPES))
        if allow_held_out or (colour, shape) not in HELD_OUT_PAIRS:
            break
    size = str(rng.choice(list(SIZES)))
    dx, dy = (int(v) for v in rng.integers(-JITTER_PX, JITTER_PX + 1, size=2))
    return SceneObject(colour, shape, size, position, dx, dy)


def sample_scene(rng: np.random.Generator, allow_held_out: bool = False, world: World = WORLDS["flat"]) -> Scene:
    draw = rng.random()
    n_objects = next((n for threshold, n in world.object_counts if draw < threshold), world.object_counts[-1][1])
    positions = rng.choice(list(POSITIONS), size=n_objects, replace=False)
    objects = []
    for position in positions:
        obj = sample_object(rng, str(position), allow_held_out)
        # Two objects of the same colour would make the caption ambiguous for the scorer.
        while any(obj.colour == other.colour for other in objects):
            obj = sample_object(rng, str(position), allow_held_out)
        objects.append(obj)
    return _scene(objects, str(rng.choice(list(BACKGROUNDS))), rng, world)


def _scene(objects, background: str, rng: np.random.Generator, world: World) -> Scene:
    """The scene, with the world's unstated detail (shading, grain) drawn from `rng`; the flat world draws
    nothing more, so its scenes and datasets stay what they were."""
    if world.grain_std <= 0 and world.shading <= 0 and world.tile_strength <= 0:
        return Scene(tuple(objects), background)
    if world.shading > 0:
        objects = [replace(o, shade=world.shading, shade_angle=float(rng.uniform(0, 2 * np.pi))) for o in objects]
    return Scene(tuple(objects), background, grain_seed=int(rng.integers(2**31)), grain_std=world.grain_std,
                 grain_sigma=world.grain_sigma, tile_strength=world.tile_strength, tile_prob=world.tile_prob,
                 tile_px=world.tile_px)


def sample_dataset(n: int, seed: int, world: str = "flat") -> tuple[np.ndarray, list[str], list[Scene]]:
    """n training scenes of `world`: images (n, 64, 64, 3) uint8, captions, scenes. Deterministic in seed."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, world=WORLDS[world]) for _ in range(n)]
    images = np.stack([render(s) for s in scenes])
    return images, [caption(s) for s in scenes], scenes


def evaluation_scenes(n: int, seed: int, held_out: bool) -> list[Scene]:
    """Single- and two-object scenes for evaluation.

    held_out=False: only training-distribution colour-shape pairs (seen combinations);
    held_out=True: every scene has at least one object with a held-out colour-shape pair.
    """
    rng = np.random.default_rng(seed)
    scenes: list[Scene] = []
    while len(scenes) < n:
        scene = sample_scene(rng, allow_held_out=held_out)
        has_held_out = any((o.colour, o.shape) in HELD_OUT_PAIRS for o in scene.objects)
        if has_held_out == held_out:
            scenes.append(scene)
    return scenes


def parse_caption(text: str) -> list[dict[str, str]]:
    """The attributes a prompt states, object by object: [{colour, shape, size, position}, ...].

    Only the controlled grammar is understood; attributes a phrase leaves out are absent from its dict.
    """
    objects = []
    phrase_to_position = {v: k for k, v in POSITION_PHRASES.items()}
    for part in text.lower().strip().split(" and "):
        words = part.split()
        obj: dict[str, str] = {}
        for w in words:
            if w in COLOURS:
                obj["colour"] = w
            elif w in SHAPES:
                obj["shape"] = w
            elif w in SIZES:
                obj["size"] = w
        for phrase, position in phrase_to_position.items():
            if phrase in part:
                obj["position"] = position
        if obj:
            objects.append(obj)
    return objects


def caption_scene(caption: str, background: str = "white", rng: np.random.Generator | None = None,
                  world: World = WORLDS["flat"]) -> Scene:
    """The scene a shapes-world caption describes (every attribute stated); with `rng`, each object gets the
    training distribution's position jitter (and, in a world with detail, its grain and shading), otherwise
    none."""
    objects = []
    for obj in parse_caption(caption):
        jitter = (0, 0) if rng is None else tuple(int(v) for v in rng.integers(-JITTER_PX, JITTER_PX + 1, 2))
        missing = {"colour", "shape", "size", "position"} - set(obj)
        if missing:
            raise ValueError(f"caption {caption!r} leaves {', '.join(sorted(missing))} unstated; cannot render it")
        objects.append(SceneObject(obj["colour"], obj["shape"], obj["size"], obj["position"], *jitter))
    if not objects:
        raise ValueError(f"caption {caption!r} describes no object of the shapes world")
    return Scene(tuple(objects), background) if rng is None else _scene(objects, background, rng, world)


def caption_scenes(captions: Sequence[str], per_caption: int = 4, seed: int = 0, world: str = "flat") -> list[Scene]:
    """`per_caption` scenes of each caption, with the background, position jitter (and the world's detail) the
    caption leaves open drawn as in training (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    return [caption_scene(text, str(rng.choice(list(BACKGROUNDS))), rng, WORLDS[world])
            for text in captions for _ in range(per_caption)]


def true_renders(captions: Sequence[str], per_caption: int = 4, seed: int = 0, world: str = "flat") -> np.ndarray:
    """Renders of `caption_scenes`: the reference set."""
    return np.stack([render(s) for s in caption_scenes(captions, per_caption, seed, world)])
