"""Which default model should ship? Issue 10's and issue 16's experiment, one command.

    python -m benchmarks.text_encoders --models assets/shapes-v1 DIR_A DIR_B [--json OUT]

For every model folder (trained with `python -m analysis train-default --text-encoder ...`), on the same
prompts and seeds: attribute accuracy on seen and held-out colour-shape pairs, by attribute and by object
count (`eval_default.split_accuracy`); cross-attention localisation per word kind and per layer, the
convergence ratio and the encoder/decoder drift (`eval_signals.signal_report`); binding on two-object prompts
(`eval_signals.binding_report`); what halving the steps costs (median PSNR of 10 against 20 DDIM steps, and
the judge's KID against true renders at 10 and at 20 steps with a paired bootstrap over prompts); size on
disk; and the 20-step latency, timed interleaved (one generation of each model per round, the order rotating)
so that drift of the shared machine falls on all models alike. The first model is the reference (the
shipped one). Then issue 16's decision rule, per model:
    (i) seen accuracy >= 90%, held-out >= 75%;
    (ii) colour and shape words >= 2x on localisation (mass on the object over its area share) and on
         binding (mass on their own object over the other object), medians of the mean-of-layers maps;
    (iii) halving the steps costs something: median PSNR 10 vs 20 steps <= 35 dB and KID(10 steps, renders)
          above KID(20 steps, renders), the paired bootstrap interval of the difference above 0;
    (iv) latency <= 2x the reference's, size <= 50 MB.
The choice: the candidate meeting all four with the highest min(colour binding, shape binding); if none, the
highest min(binding) among those meeting (i) and (iv), with the rules it misses. Prints a table and one JSON
object on its last line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from analysis.jsonsafe import dumps, emit
from analysis.eval.sweep import read_prompts
from analysis.models import load_pipeline
from analysis.toy.train import world_of
from benchmarks.eval_default import split_accuracy
from benchmarks.eval_signals import binding_report, layer_maps, signal_report

RULE = {"seen": 0.90, "held_out": 0.75, "localisation": 2.0, "binding": 2.0, "half_steps_psnr_db": 35.0,
        "latency_over_reference": 2.0, "size_mb": 50.0}
RULE_GROUPS = {
    "i": ("seen_accuracy", "held_out_accuracy"),
    "ii": ("colour_localisation", "shape_localisation", "colour_binding", "shape_binding"),
    "iii": ("half_steps_psnr", "half_steps_kid"),
    "iv": ("latency", "size"),
}


def text_encoder_of(model_dir: str) -> dict:
    """What the folder's recipe says about its text side."""
    from analysis.toy.train import text_encoder_kind

    config = json.loads((Path(model_dir) / "text_encoder" / "config.json").read_text())
    return {"kind": text_encoder_kind(model_dir) or "joint", "layers": config["num_hidden_layers"]}


def _at_least(value, bar) -> bool:
    return value is not None and value >= bar


def decide(accuracy: dict, signals: dict, binding: dict | None = None, step_cost: dict | None = None,
           latency_over_reference: float | None = None, size_mb: float | None = None) -> dict:
    """Issue 16's rule (module docstring). A measure not taken (None) fails its check, as does a word whose
    object was never drawn."""
    mass = signals["mass_over_area_median"]
    binding, step_cost = binding or {}, step_cost or {}
    checks = {
        "seen_accuracy": accuracy["seen"]["overall"] >= RULE["seen"],
        "held_out_accuracy": accuracy["held_out"]["overall"] >= RULE["held_out"],
        "colour_localisation": _at_least(mass.get("colour"), RULE["localisation"]),
        "shape_localisation": _at_least(mass.get("shape"), RULE["localisation"]),
        "colour_binding": _at_least(binding.get("colour_binding_median"), RULE["binding"]),
        "shape_binding": _at_least(binding.get("shape_binding_median"), RULE["binding"]),
        "half_steps_psnr": step_cost.get("psnr_half_vs_full_median_db") is not None
        and step_cost["psnr_half_vs_full_median_db"] <= RULE["half_steps_psnr_db"],
        "half_steps_kid": step_cost.get("kid_half_minus_full", {}).get("low", float("nan")) > 0,
        "latency": latency_over_reference is not None and latency_over_reference <= RULE["latency_over_reference"],
        "size": size_mb is not None and size_mb <= RULE["size_mb"],
    }
    rules = {rule: all(checks[c] for c in names) for rule, names in RULE_GROUPS.items()}
    return {"passes": all(rules.values()), "rules": rules, "checks": checks,
            "misses": [c for c, ok in checks.items() if not ok]}


def min_binding(binding: dict) -> float:
    values = [binding.get("colour_binding_median"), binding.get("shape_binding_median")]
    return min(float("-inf") if v is None else v for v in values)


def choose(models: dict) -> dict:
    """Which model ships (module docstring); `models` maps a name to {"decision", "binding"}."""
    def pick(names):
        return max(names, key=lambda m: min_binding(models[m]["binding"])) if names else None

    passing = [m for m, r in models.items() if r["decision"]["passes"]]
    if passing:
        return {"ship": pick(passing), "by": "meets rules i-iv, highest min(colour, shape binding)"}
    usable = [m for m, r in models.items() if r["decision"]["rules"]["i"] and r["decision"]["rules"]["iv"]]
    name = pick(usable)
    return {"ship": name, "by": "no model meets all four rules: highest min(colour, shape binding) among those "
                                "meeting i and iv", "misses": models[name]["decision"]["misses"] if name else None}


def folder_size_mb(model_dir: str) -> float:
    return sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file()) / 1e6


def step_cost(pipe, captions: list[str], seeds: list[int], guidance: float, full_steps: int = 20,
              half_steps: int = 10, n_bootstrap: int = 1000, world: str = "flat") -> dict:
    """What halving the DDIM steps costs on one model: PSNR of each half-step image against the same seed's
    full-step image, and the judge's KID against true renders of the same captions at both step counts (the
    two sets share (prompt, seed), so they are one draw made twice and never a cross pair)."""
    from analysis.eval import distribution
    from analysis.eval.judge import joint_features, load_judge
    from analysis.metrics import psnr
    from analysis.toy import scenes

    images: dict[int, list[np.ndarray]] = {full_steps: [], half_steps: []}
    for caption in captions:
        for seed in seeds:
            for steps in (full_steps, half_steps):
                images[steps].append(_generate(pipe, caption, steps, guidance, seed))
    psnrs = [psnr(f, h) for f, h in zip(images[full_steps], images[half_steps])]
    judge, processor = load_judge()
    labels = [c for c in captions for _ in seeds]
    prompt_ids = [p for p in range(len(captions)) for _ in seeds]
    units = [(p, s) for p in range(len(captions)) for s in seeds]
    sets = {"full": joint_features(judge, processor, images[full_steps], labels),
            "half": joint_features(judge, processor, images[half_steps], labels),
            "renders": joint_features(judge, processor, scenes.true_renders(captions, len(seeds), seed=0, world=world),
                                      labels)}
    paired = distribution.PairedSets(sets, {k: prompt_ids for k in sets}, {"full": units, "half": units})
    return {"full_steps": full_steps, "half_steps": half_steps, "prompts": len(captions), "seeds": seeds,
            "psnr_half_vs_full_median_db": float(np.median(psnrs)),
            "psnr_half_vs_full_quartiles_db": [float(q) for q in np.percentile(psnrs, [25, 75])],
            "kid_full_vs_renders": paired.estimate("kid", "full", "renders", n_bootstrap).as_dict(),
            "kid_half_vs_renders": paired.estimate("kid", "half", "renders", n_bootstrap).as_dict(),
            "kid_half_minus_full": paired.paired_difference("kid", "half", "full", "renders", n_bootstrap).as_dict()}


def step_pairs(pipe, captions: list[str], full_steps: int, guidance: float, seed: int = 0) -> list[tuple]:
    """(full-step image, half-step image, PSNR) per caption, the same seed for both."""
    from analysis.metrics import psnr

    pairs = []
    for caption in captions:
        full, half = (_generate(pipe, caption, steps, guidance, seed) for steps in (full_steps, full_steps // 2))
        pairs.append((full, half, psnr(full, half)))
    return pairs


def _generate(pipe, caption: str, steps: int, guidance: float, seed: int) -> np.ndarray:
    out = pipe(caption, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
               generator=torch.Generator().manual_seed(seed)).images[0]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


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
    parser.add_argument("--binding-prompts", type=int, default=20, help="two-object prompts for binding")
    parser.add_argument("--cost-prompts", default="assets/prompts/shapes-30.txt",
                        help="captions for the cost of halving the steps (PSNR, KID)")
    parser.add_argument("--cost-seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=20, help="full steps (halved for the step cost)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-latency", action="store_true", help="(while something else loads the machine)")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--figure", default=None, help="also write a PNG of each word's map per model here")
    parser.add_argument("--figure-prompt", default="a large red circle on the left")
    parser.add_argument("--figure-only", action="store_true", help="only the figure (no measurements)")
    parser.add_argument("--steps-figure", default=None,
                        help="also write a PNG of full- vs half-step images per model (the first --steps-figure-n "
                             "cost prompts, seed 0)")
    parser.add_argument("--steps-figure-n", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipes = {}
    for model in args.models:
        pipes[model] = load_pipeline(model, scheduler="ddim")
        pipes[model].set_progress_bar_config(disable=True)
    if args.figure:
        from viz.grid import word_maps_figure

        kinds = {m: text_encoder_of(m) for m in pipes}
        rows = [{"label": f"{Path(m).name}: {kinds[m]['kind']} ({kinds[m]['layers']} layers), {world_of(m)} world",
                 **word_maps(pipe, args.figure_prompt, 0, args.steps, args.guidance)} for m, pipe in pipes.items()]
        word_maps_figure(rows, title=f"'{args.figure_prompt}', seed 0, {args.steps} DDIM steps: each word's "
                                     "cross-attention (mean of steps and layers)").savefig(args.figure, dpi=100)
        for model, pipe in pipes.items():
            print(f"{model}: cosine of each word's state to its word alone "
                  f"{dict(zip(args.figure_prompt.split(), own_word_cosine(pipe, args.figure_prompt)))}")
    captions = read_prompts(args.cost_prompts)
    if args.steps_figure:
        from viz.grid import step_pairs_figure

        rows = [{"label": Path(m).name, "pairs": step_pairs(pipe, captions[:args.steps_figure_n], args.steps,
                                                            args.guidance)} for m, pipe in pipes.items()]
        step_pairs_figure(rows, title=f"{args.steps} against {args.steps // 2} DDIM steps, seed 0, guidance "
                                      f"{args.guidance:g}").savefig(args.steps_figure, dpi=110)
    if args.figure_only:
        return 0
    seeds = [int(x) for x in args.cost_seeds.split(",")]
    report: dict = {"steps": args.steps, "guidance": args.guidance, "prompts_per_split": args.prompts,
                    "signal_prompts": args.signal_prompts, "binding_prompts": args.binding_prompts,
                    "step_cost": {"prompts": args.cost_prompts, "seeds": seeds}, "rule": RULE, "models": {}}
    for model, pipe in pipes.items():
        accuracy, _, _ = split_accuracy(pipe, args.prompts, args.steps, args.guidance, args.seed)
        signals = signal_report(pipe, args.signal_prompts, args.steps, args.guidance)
        binding = binding_report(pipe, args.binding_prompts, args.steps, args.guidance)
        cost = step_cost(pipe, captions, seeds, args.guidance, full_steps=args.steps, half_steps=args.steps // 2,
                         world=world_of(model))
        report["models"][model] = {"text_encoder": text_encoder_of(model), **accuracy, "signals": signals,
                                   "binding": binding, "step_cost": cost, "size_mb": folder_size_mb(model)}
        print(model, dumps({k: report["models"][model][k] for k in ("binding", "step_cost")}), flush=True)
    if not args.skip_latency:
        times = interleaved_latency(pipes, args.steps, args.guidance, args.rounds)
        reference = statistics.median(times[args.models[0]])
        for model, ts in times.items():
            report["models"][model]["latency_s"] = {
                "median": statistics.median(ts), "min": min(ts), "rounds": args.rounds, "threads": args.threads,
                "over_reference": statistics.median(ts) / reference}
    for model, r in report["models"].items():
        r["decision"] = decide(r, r["signals"], r["binding"], r["step_cost"],
                               r.get("latency_s", {}).get("over_reference"), r["size_mb"])
    report["choice"] = (choose(report["models"]) if not args.skip_latency else
                        {"ship": None, "by": "no choice: latency not measured (--skip-latency), rule iv unchecked"})

    def num(value):
        return float("nan") if value is None else value

    print(f"{'model':32s} {'text enc':>10s} {'seen':>6s} {'held':>6s} {'loc c/s':>11s} {'bind c/s':>11s} "
          f"{'10v20 dB':>8s} {'dKID 10-20 [95%]':>26s} {'late/early':>10s} {'enc/dec':>7s} {'lat x':>6s} "
          f"{'MB':>5s}  rules")
    for model, r in report["models"].items():
        mass, bind, cost = r["signals"]["mass_over_area_median"], r["binding"], r["step_cost"]
        dkid = cost["kid_half_minus_full"]
        rules = "".join(k if ok else "-" for k, ok in r["decision"]["rules"].items())
        print(f"{model[-32:]:32s} {r['text_encoder']['kind']:>10s} {r['seen']['overall']:6.3f} "
              f"{r['held_out']['overall']:6.3f} {num(mass['colour']):5.2f}/{num(mass['shape']):5.2f} "
              f"{num(bind['colour_binding_median']):5.2f}/{num(bind['shape_binding_median']):5.2f} "
              f"{cost['psnr_half_vs_full_median_db']:8.1f} "
              f"{dkid['value']:+8.4f} [{dkid['low']:+.4f},{dkid['high']:+.4f}] "
              f"{num(r['signals']['cross_attn_late_over_early_median']):10.3f} "
              f"{num(r['signals']['encoder_over_decoder_drift_median']):7.3f} "
              f"{num(r.get('latency_s', {}).get('over_reference')):6.2f} {r['size_mb']:5.1f}  {rules}")
    print(f"ship: {report['choice']}")
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
