"""Evaluate the embedded default model: attribute accuracy on seen and held-out prompts, generation latency,
and a sample grid. `python -m benchmarks.eval_default [--prompts 100] [--grid assets/sample_grid.png]`.

Prints one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from analysis.jsonsafe import dumps
from analysis.models import load_pipeline
from analysis.toy import scenes
from analysis.toy.fidelity import attribute_accuracy


def generate_batch(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int = 10) -> np.ndarray:
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        # One generator per prompt: image i depends only on (seed + i), not on the batching.
        generators = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np").images
        images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(images)


def latency(pipe, steps: int, guidance: float, repeats: int) -> list[float]:
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        pipe("a large red circle on the left", num_inference_steps=steps, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(r), output_type="np")
        times.append(time.perf_counter() - start)
    return times[1:]  # the first run is warm-up


def split_accuracy(pipe, n_prompts: int, steps: int, guidance: float, seed: int) -> tuple[dict, list, list]:
    """Attribute accuracy on seen and held-out colour-shape pairs, pooled and by object count.

    Returns (report per split, the first 12 images of each split, their prompts) for a sample grid.
    """
    report, sample_images, sample_prompts = {}, [], []
    for split, held_out, split_seed in (("seen", False, 11), ("held_out", True, 12)):
        split_scenes = scenes.evaluation_scenes(n_prompts, seed=split_seed, held_out=held_out)
        prompts = [scenes.caption(s) for s in split_scenes]
        images = generate_batch(pipe, prompts, steps, guidance, seed)
        acc = attribute_accuracy(list(images), prompts)
        for label, n_objects in (("one_object", 1), ("two_objects", 2)):
            idx = [i for i, s in enumerate(split_scenes) if len(s.objects) == n_objects]
            if idx:
                acc[label] = attribute_accuracy([images[i] for i in idx], [prompts[i] for i in idx])
        report[split] = _rounded(acc)
        renders = np.stack([scenes.render(s) for s in split_scenes])
        report[split]["scorer_on_renders"] = round(attribute_accuracy(list(renders), prompts)["overall"], 4)
        sample_images += list(images[:12])
        sample_prompts += prompts[:12]
    return report, sample_images, sample_prompts


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=100, help="prompts per split (seen / held-out)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", default=None, help="write a sample grid PNG here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = load_pipeline(args.model, scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    report: dict = {"model": args.model, "steps": args.steps, "guidance": args.guidance, "prompts_per_split": args.prompts}
    accuracy, all_images, all_prompts = split_accuracy(pipe, args.prompts, args.steps, args.guidance, args.seed)
    report.update(accuracy)
    for split in accuracy:
        print(split, dumps(report[split]), flush=True)

    times = latency(pipe, args.steps, args.guidance, args.repeats)
    report["latency_s"] = {"median": round(statistics.median(times), 4), "min": round(min(times), 4),
                           "repeats": args.repeats, "threads": args.threads, "size": 64, "cfg": args.guidance > 1}
    if args.grid:
        from viz.grid import image_grid_figure

        fig = image_grid_figure(all_images, all_prompts, cols=6,
                                title=f"{args.model}: {args.steps} DDIM steps, guidance {args.guidance} (top: seen, bottom: held-out pairs)")
        fig.savefig(args.grid, dpi=130)
        report["grid"] = args.grid
    print(dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
