"""A Fréchet distance for the shapes world: the FID analog, between generated images and true renders of the
same captions, in a small fixed hand-crafted feature space.

Why not Inception features: no weights offline, and on 64x64 flat-colour scenes they would mostly measure
"not ImageNet". Why hand-crafted and not the toy autoencoder's encoder: the VAE is trained to reconstruct
exactly these images, so its latent is deliberately insensitive to the small blur and noise it smooths away.
Each feature group below is chosen for one defect that acceleration causes, and the tests check that each
defect moves the distance up:

- colour (9): the fraction of pixels near each of the six object colours (soft RGB kernel), and the mean
  background colour. Wrong colour moves mass between these bins;
- sharpness and noise (4): mean and 90th percentile of the Sobel gradient magnitude, the mean absolute
  Laplacian, and the median absolute Laplacian on flat regions. Blur lowers the first three, noise raises
  all four (the last one only reacts to noise, not to edges);
- shape (12): an 8-bin histogram of edge orientations weighted by gradient magnitude (circles spread evenly,
  squares pile on 0/90 degrees, triangles add +-60 degrees), the foreground fraction, the mean compactness
  (4 pi area / perimeter^2) and solidity of the foreground regions, and the number of regions. Deformed or
  fused shapes move these;
- layout (9): foreground mass in a 3x3 grid of the image (objects in the wrong place).

Joint with the caption. FID compares unconditional distributions: a sweep that paints every red circle blue
and every blue one red has the same colour histogram over the set. Like conditional FID (Soloveitchik et al.,
2021), we append to every image's features what its caption states (one-hot colours, shapes and positions,
`caption_features`) and compare the joint distributions; generated and reference sets share the captions,
so only the image-caption covariances can differ, and a wrong colour, shape or place moves them.

Features are z-scored with the reference set's mean and standard deviation (floored, so that a feature that
is constant over the renders does not explode), then the usual Fréchet distance between the two Gaussians,
||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), is taken (scipy's sqrtm, as in FID). With few images per
setting the covariance is rank-deficient; the distance is then biased upwards as FID is at small n, so
compare settings at the same n (a sweep always does). Very strong blur (sigma beyond ~2 px on these 64 px
images) saturates the distance: the objects are then no longer found as foreground at all.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import linalg, ndimage
from skimage.measure import label, regionprops

from analysis.toy import scenes

FEATURE_NAMES = (
    [f"colour_{c}" for c in scenes.COLOURS] + ["background_r", "background_g", "background_b"]
    + ["grad_mean", "grad_p90", "laplace_mean", "flat_noise"]
    + [f"orient_{i}" for i in range(8)] + ["foreground", "compactness", "solidity", "regions"]
    + [f"mass_{r}{c}" for r in "tmb" for c in "lcr"]
)
CAPTION_FEATURE_NAMES = ([f"colour_{c}" for c in scenes.COLOURS] + [f"shape_{s}" for s in scenes.SHAPES]
                         + [f"position_{p}" for p in scenes.POSITIONS])
_COLOUR_SCALE = 60.0  # RGB distance at which a pixel counts half as "that colour"
_FOREGROUND_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel is foreground
_FLOOR = 0.05  # z-scoring floor on the reference standard deviation


def image_features(image: np.ndarray) -> np.ndarray:
    """The feature vector (len(FEATURE_NAMES),) of one (H, W, 3) uint8 image."""
    img = np.asarray(image, dtype=float)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    h, w, _ = img.shape
    palette = np.array(list(scenes.COLOURS.values()), dtype=float)
    dist = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)
    colour = np.exp(-((dist / _COLOUR_SCALE) ** 2) * np.log(2)).mean(axis=(0, 1))

    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(img - background, axis=-1) > _FOREGROUND_DISTANCE

    grey = img.mean(axis=-1) / 255.0
    gx, gy = ndimage.sobel(grey, axis=1), ndimage.sobel(grey, axis=0)
    grad = np.hypot(gx, gy)
    lap = np.abs(ndimage.laplace(grey))
    flat = ndimage.binary_erosion(grad < 0.1, iterations=1)
    flat_noise = float(np.median(lap[flat])) if flat.any() else float(np.median(lap))

    angle = np.mod(np.arctan2(gy, gx), np.pi)
    orient, _ = np.histogram(angle, bins=8, range=(0, np.pi), weights=grad)
    orient = orient / max(orient.sum(), 1e-9)

    regions = [r for r in regionprops(label(foreground)) if r.area >= 4]
    compactness = np.mean([4 * np.pi * r.area / max(r.perimeter, 1.0) ** 2 for r in regions]) if regions else 0.0
    solidity = np.mean([r.solidity for r in regions]) if regions else 0.0

    mass = np.array([foreground[i * h // 3:(i + 1) * h // 3, j * w // 3:(j + 1) * w // 3].mean()
                     for i in range(3) for j in range(3)])
    return np.concatenate([
        colour, background / 255.0,
        [grad.mean(), np.percentile(grad, 90), lap.mean(), flat_noise],
        orient, [foreground.mean(), min(compactness, 1.5), solidity, len(regions)],
        mass,
    ]).astype(np.float64)


def caption_features(caption: str) -> np.ndarray:
    """What the caption states, one-hot summed over its objects: colours (6), shapes (3), positions (5)."""
    vec = np.zeros(len(CAPTION_FEATURE_NAMES))
    for obj in scenes.parse_caption(caption):
        for key in ("colour", "shape", "position"):
            if key in obj:
                vec[CAPTION_FEATURE_NAMES.index(f"{key}_{obj[key]}")] += 1.0
    return vec


def features(images: Sequence[np.ndarray] | np.ndarray, captions: Sequence[str] | None = None) -> np.ndarray:
    """(n, d) features of n images (a (n, H, W, 3) array or a list of (H, W, 3) arrays); with captions, each
    row is [image features, caption features] (see the module docstring: the joint distribution)."""
    feats = np.stack([image_features(im) for im in images])
    if captions is None:
        return feats
    if len(captions) != len(feats):
        raise ValueError(f"{len(feats)} images but {len(captions)} captions")
    return np.concatenate([feats, np.stack([caption_features(c) for c in captions])], axis=1)


def frechet_distance(feats: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to `feats` and `reference` (both (n, d)), after z-scoring
    both with the reference's statistics (see the module docstring)."""
    feats, reference = np.atleast_2d(feats), np.atleast_2d(reference)
    if len(feats) < 2 or len(reference) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {len(feats)} and {len(reference)}")
    mu_r, sd_r = reference.mean(axis=0), np.maximum(reference.std(axis=0), _FLOOR)
    a, b = (feats - mu_r) / sd_r, (reference - mu_r) / sd_r
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the covariances of small sets are rank-deficient (see above)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # the usual FID fix for a near-singular product
            eps = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(max(0.0, np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))


def caption_scene(caption: str, background: str = "white", rng: np.random.Generator | None = None) -> scenes.Scene:
    """The scene a shapes-world caption describes (every attribute stated); with `rng`, each object gets the
    training distribution's position jitter, otherwise none."""
    objects = []
    for obj in scenes.parse_caption(caption):
        jitter = (0, 0) if rng is None else tuple(int(v) for v in rng.integers(-scenes.JITTER_PX, scenes.JITTER_PX + 1, 2))
        missing = {"colour", "shape", "size", "position"} - set(obj)
        if missing:
            raise ValueError(f"caption {caption!r} leaves {', '.join(sorted(missing))} unstated; cannot render it")
        objects.append(scenes.SceneObject(obj["colour"], obj["shape"], obj["size"], obj["position"], *jitter))
    if not objects:
        raise ValueError(f"caption {caption!r} describes no object of the shapes world")
    return scenes.Scene(tuple(objects), background)


def true_renders(captions: Sequence[str], per_caption: int = 4, seed: int = 0) -> np.ndarray:
    """Renders of the given captions, `per_caption` each, with the background and position jitter the
    caption leaves open drawn as in training (deterministic in seed): the reference set."""
    rng = np.random.default_rng(seed)
    out = []
    for text in captions:
        for _ in range(per_caption):
            background = str(rng.choice(list(scenes.BACKGROUNDS)))
            out.append(scenes.render(caption_scene(text, background, rng)))
    return np.stack(out)
