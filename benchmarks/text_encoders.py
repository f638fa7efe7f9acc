"""Which text encoder should the default model have? Issue 10's experiment, one command.

    python -m benchmarks.text_encoders --models assets/shapes-v1 DIR_A DIR_B [--json OUT]

For every model folder (trained with `python -m analysis train-default --text-encoder ...`), on the same
prompts and seeds: attribute accuracy on seen and held-out colour-shape pairs, by attribute and by object
count (`eval_default.split_accuracy`); cross-attention localisation per word kind and per layer, the
convergence ratio and the encoder/decoder drift (`eval_signals.signal_report`); and the 30-step latency,
timed interleaved (one generation of each model per round, the order rotating) so that drift of the shared
machine falls on all models alike. Then the decision rule, per model:
    seen accuracy >= 90%, held-out >= 75%, and colour and shape words put at least twice the object's area
    share of their cross-attention mass on the object (median over prompts of the mean-of-layers map).
Prints a table and one JSON object on its last line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from analysis.jsonsafe import dumps
from analysis.models import load_pipeline
from benchmarks.eval_default import split_accuracy
from benchmarks.eval_signals import layer_maps, signal_report

RULE = {"seen": 0.90, "held_out": 0.75, "localisation": 2.0}


def text_encoder_of(model_dir: str) -> dict:
    """What the folder's recipe says about its text side (older exports predate the field: joint)."""
    recipe_file = Path(model_dir) / "training.json"
    recipe = json.loads(recipe_file.read_text()).get("recipe", {}) if recipe_file.exists() else {}
    config = json.loads((Path(model_dir) / "text_encoder" / "config.json").read_text())
    return {"kind": recipe.get("text_encoder", "joint"), "layers": config["num_hidden_layers"]}


def decide(accuracy: dict, signals: dict) -> dict:
    checks = {
        "seen_accuracy": accuracy["seen"]["overall"] >= RULE["seen"],
        "held_out_accuracy": accuracy["held_out"]["overall"] >= RULE["held_out"],
        "colour_localisation": (signals["mass_over_area_median"]["colour"] or 0.0) >= RULE["localisation"],
        "shape_localisation": (signals["mass_over_area_median"]["shape"] or 0.0) >= RULE["localisation"],
    }
    return {"passes": all(checks.values()), "checks": checks}


def interleaved_latency(pipes: dict, steps: int, guidance: float, rounds: int) -> dict[str, list[float]]:
    names = list(pipes)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # one untimed warm-up each
        pipes[name]("a large red circle on the left", num_inference_steps=steps, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(0), output_type="np")
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            pipes[name]("a large red circle on the left", num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator().manual_seed(r + 1), output_type="np")
            times[name].append(time.perf_counter() - start)
    return times


def word_maps(pipe, prompt: str, seed: int, steps: int, guidance: float) -> dict:
    """The image and each word's cross-attention map (mean over steps and layers, image size) for one prompt."""
    from analysis.probes import default_probes
    from analysis.run import RunConfig, generate

    result = generate(pipe, RunConfig(prompt, seed=seed, steps=steps, guidance=guidance, probes=default_probes()),
                      measure_latency=False)
    image, tokens = result.image[0], result.tokens[0]
    words = prompt.split()
    cross = result.signals["attention_maps"]["cross"]
    maps = [np.mean(list(layer_maps(cross, tokens.index(w), image.shape[0]).values()), axis=0) for w in words]
    return {"image": image, "words": words, "maps": np.stack(maps)}


@torch.no_grad()
def own_word_cosine(pipe, prompt: str) -> list[float]:
    """Per word of `prompt`: cosine between its token's state and the state of its word alone (the same
    encoder's embeddings and final norm, no transformer layers). 1.0 = the state is its own word."""
    from analysis.toy.train import text_encoder_variant

    ids = pipe.tokenizer(prompt, return_tensors="pt").input_ids
    contextual = pipe.text_encoder(ids)[0][0]
    alone = text_encoder_variant(pipe.text_encoder, "embeddings")(ids)[0][0]
    cos = torch.nn.functional.cosine_similarity(contextual, alone, dim=-1)
    return [round(float(c), 3) for c in cos[1:-1]]  # without the start and end tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="model folders; the first is the reference")
    parser.add_argument("--prompts", type=int, default=100, help="accuracy prompts per split")
    parser.add_argument("--signal-prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-latency", action="store_true", help="(while something else loads the machine)")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--figure", default=None, help="also write a PNG of each word's map per model here")
    parser.add_argument("--figure-prompt", default="a large red circle on the left")
    parser.add_argument("--figure-only", action="store_true", help="only the figure (no measurements)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipes = {}
    for model in args.models:
        pipes[model] = load_pipeline(model, scheduler="ddim")
        pipes[model].set_progress_bar_config(disable=True)
    if args.figure:
        from viz.grid import word_maps_figure

        kinds = {m: text_encoder_of(m) for m in pipes}
        rows = [{"label": f"{kinds[m]['kind']} ({kinds[m]['layers']} layers)",
                 **word_maps(pipe, args.figure_prompt, 0, args.steps, args.guidance)} for m, pipe in pipes.items()]
        word_maps_figure(rows, title=f"'{args.figure_prompt}', seed 0, {args.steps} DDIM steps: each word's "
                                     "cross-attention (mean of steps and layers)").savefig(args.figure, dpi=100)
        for model, pipe in pipes.items():
            print(f"{model}: cosine of each word's state to its word alone "
                  f"{dict(zip(args.figure_prompt.split(), own_word_cosine(pipe, args.figure_prompt)))}")
        if args.figure_only:
            return 0
    report: dict = {"steps": args.steps, "guidance": args.guidance, "prompts_per_split": args.prompts,
                    "signal_prompts": args.signal_prompts, "rule": RULE, "models": {}}
    for model, pipe in pipes.items():
        accuracy, _, _ = split_accuracy(pipe, args.prompts, args.steps, args.guidance, args.seed)
        signals = signal_report(pipe, args.signal_prompts, args.steps, args.guidance)
        report["models"][model] = {"text_encoder": text_encoder_of(model), **accuracy, "signals": signals,
                                   "decision": decide(accuracy, signals)}
        print(model, dumps(report["models"][model]["decision"]), flush=True)
    if not args.skip_latency:
        times = interleaved_latency(pipes, args.steps, args.guidance, args.rounds)
        reference = statistics.median(times[args.models[0]])
        for model, ts in times.items():
            report["models"][model]["latency_s"] = {
                "median": statistics.median(ts), "min": min(ts), "rounds": args.rounds, "threads": args.threads,
                "over_reference": statistics.median(ts) / reference}

    print(f"{'model':40s} {'text encoder':>16s} {'seen':>6s} {'held':>6s} {'colour':>7s} {'shape':>7s} "
          f"{'size':>6s} {'posn':>6s} {'func':>6s} {'late/early':>10s} {'enc/dec':>8s} {'latency':>8s}  ship?")
    for model, r in report["models"].items():
        mass = {k: float("nan") if v is None else v for k, v in r["signals"]["mass_over_area_median"].items()}
        lat = r.get("latency_s", {}).get("median", float("nan"))
        print(f"{model[-40:]:40s} {r['text_encoder']['kind']:>16s} {r['seen']['overall']:6.3f} "
              f"{r['held_out']['overall']:6.3f} {mass['colour']:7.2f} {mass['shape']:7.2f} {mass['size']:6.2f} "
              f"{mass['position']:6.2f} {mass['function']:6.2f} "
              f"{r['signals']['cross_attn_late_over_early_median'] or float('nan'):10.3f} "
              f"{r['signals']['encoder_over_decoder_drift_median'] or float('nan'):8.3f} {lat:8.3f}  "
              f"{'yes' if r['decision']['passes'] else 'no'}")
    text = dumps(report)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
