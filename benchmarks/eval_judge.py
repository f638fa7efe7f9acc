"""How good a judge is shapes-CLIP? `python -m benchmarks.eval_judge [--json docs/results/judge_eval.json]`.

1. zero-shot attribute accuracy on fresh renders (seen / held-out colour-shape pairs, one / two objects), raw
   and after the default model's autoencoder;
2. agreement with the hand-written scorer on the default model's own generations (30 DDIM steps, guidance 5,
   the prompts and seeds of benchmarks.eval_default);
3. FD and KID on its embeddings against clean renders, per defect and strength, with bootstrap intervals;
4. the time to embed 200 images.
Prints one JSON object on its last line. (docs/results/judge_handmade_fd.json holds the hand-made 34-feature
Fréchet distance on the same sets, made by this script's --compare-handmade at commit 690145a on shapes-v1,
before that measure was removed.)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.eval import judge, judge_checks
from analysis.jsonsafe import dumps, emit
from analysis.toy import scenes


def save_disagreements(images, prompts, disagreements, path: str) -> None:
    """A grid of the generations where the judge and the hand-written scorer disagree (for reading by eye)."""
    from viz.grid import image_grid_figure

    rows = disagreements[:24]
    labels = [f"{prompts[d['image']]}\n{d['attribute']} {d['expected']}: scorer {d['scorer']}, judge {d['judge']}"
              for d in rows]
    fig = image_grid_figure([images[d["image"]] for d in rows], labels, cols=4,
                            title="Judge vs hand-written scorer: where they disagree (seen pairs)")
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--judge", default=None, help="judge folder (default assets/shapes-clip)")
    parser.add_argument("--model", default="default", help="generator for the agreement check")
    parser.add_argument("--renders", type=int, default=500, help="renders per split for zero-shot accuracy")
    parser.add_argument("--prompts", type=int, default=100, help="generated prompts per split for agreement")
    parser.add_argument("--sensitivity-prompts", type=int, default=60)
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-generations", action="store_true", help="no agreement check (no generator runs)")
    parser.add_argument("--disagreement-grid", default=None, metavar="PNG",
                        help="the seen split's generations where the judge and the scorer disagree, labelled")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, processor = judge.load_judge(args.judge)
    report: dict = {"judge": str(args.judge or "assets/shapes-clip")}

    from diffusers import AutoencoderKL

    from analysis.models import DEFAULT_MODEL_DIR

    vae = AutoencoderKL.from_pretrained(DEFAULT_MODEL_DIR / "vae").eval()
    report["zero_shot"] = judge_checks.zero_shot_report(model, processor, args.renders, vae=vae)
    print("zero_shot", dumps(report["zero_shot"]), flush=True)

    if not args.skip_generations:
        from analysis.models import load_pipeline
        from benchmarks.eval_default import generate_batch

        pipe = load_pipeline(args.model, scheduler="ddim")
        pipe.set_progress_bar_config(disable=True)
        report["agreement"] = {}
        for split, held_out, split_seed in (("seen", False, 11), ("held_out", True, 12)):
            prompts = [scenes.caption(s) for s in scenes.evaluation_scenes(args.prompts, seed=split_seed, held_out=held_out)]
            images = generate_batch(pipe, prompts, 30, 5.0, 1000)
            report["agreement"][split] = judge_checks.agreement(model, processor, list(images), prompts)
            if args.disagreement_grid and split == "seen":
                save_disagreements(images, prompts, report["agreement"][split]["disagreements"], args.disagreement_grid)
        print("agreement", dumps(report["agreement"]), flush=True)

    captions = [scenes.caption(s) for s in scenes.evaluation_scenes(args.sensitivity_prompts, seed=3000, held_out=False)]
    report["sensitivity"] = judge_checks.sensitivity(model, processor, captions, per_caption=2, n_bootstrap=args.bootstrap,
                                                     vae=vae)

    images = judge_checks.render_set(captions, 4, seed=5)[1][:200]
    judge.image_embeddings(model, processor, images[:8])  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        judge.image_embeddings(model, processor, images)
        times.append(time.perf_counter() - start)
    report["embed_200_images_s"] = {"median": float(np.median(times)), "repeats": 5, "threads": args.threads}
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
