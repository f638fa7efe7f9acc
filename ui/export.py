"""Export for slides: a figure pack (PNG and SVG of every figure on screen, the images, run.json: the CLI's
contract; on the default model also the shipped observations as PNG, SVG and 16:9 slides) zipped, and a
one-slide 16:9 summary PNG readable when projected."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

from analysis import live
from analysis.report import save_png, write_run
from analysis.run import RunConfig, RunResult, config_dict
from viz import export as X
from viz.images import difference_image, first_image
from viz.numbers import percent, psnr
from viz.slide import summary_slide, tradeoff_figure


def as_run_result(model: str, baseline: live.Baseline, run: live.LiveRun | None) -> RunResult:
    """The live pair as the CLI's RunResult, so run.json keeps its contract."""
    req = baseline.request
    config = RunConfig(prompt=req.prompt, negative_prompt=req.negative_prompt, seed=req.seed, steps=req.steps,
                       guidance=req.guidance, scheduler=req.scheduler, size=req.size, attention=req.attention,
                       accel=() if run is None else run.accel)
    cfg = config_dict(config, model)
    cfg["repeats"] = 1
    signals = (run.signals if run is not None else baseline.signals) or {}
    return RunResult(
        config=cfg, model=model, baseline_image=baseline.image, image=baseline.image if run is None else run.image,
        baseline_latency_s=baseline.latency_s, latency_s=baseline.latency_s if run is None else run.latency_s,
        instrumented_latency_s=None, psnr_db=math.inf if run is None else run.psnr_db,
        ssim=1.0 if run is None else run.ssim,
        fidelity=((baseline.quality if run is None else run.quality) or {}).get("fidelity"),
        counters={} if run is None else run.counters, signals=signals,
        timesteps=baseline.timesteps if run is None else run.timesteps, tokens=baseline.tokens,
        latencies={"baseline": list(baseline.latencies), "accelerated": [] if run is None else [run.latency_s]},
    )


def slide_numbers(baseline: live.Baseline, run: live.LiveRun | None) -> list[tuple[str, str]]:
    rows = [("latency, full compute", f"{baseline.latency_s:.3f} s")]
    if run is not None:
        ideal = (run.ideal or {}).get("ideal_speedup")
        rows += [("latency, accelerated", f"{run.latency_s:.3f} s"),
                 ("speed-up measured / ideal", f"{run.speedup:.2f}x / " + (f"{ideal:.2f}x" if ideal else "n/a"))]
        if run.careful:
            rows.append(("speed-up, paired", f"{run.careful['paired_speedup']:.2f}x ({run.careful['rounds']} pairs)"))
        rows += [("PSNR / SSIM", psnr(run.psnr_db, identical="∞") + f" / {run.ssim:.3f}")]
        fid = live.fidelity_of(run.quality)
        if fid is not None:
            rows.append(("prompt fidelity", percent(fid)))
        clip = live.clip_score_of(run.quality)
        if clip is not None:
            rows.append(("CLIP score, full / accelerated", f"{run.quality['clip_score']['baseline']:.1f} / {clip:.1f}"))
    return rows


def figure_pack(out: Path, model: str, baseline: live.Baseline, run: live.LiveRun | None, rows: list[dict],
                shipped: list[dict], y: str) -> list[str]:
    """Write the pack under `out`; returns [zip of everything, the summary slide PNG], the only files left."""
    pack = out / "diffscope-figures"
    pack.mkdir(parents=True)
    result = as_run_result(model, baseline, run)
    write_run(result, pack / "run")
    req = baseline.request
    label = "full compute" if run is None else run.label
    slide = summary_slide(req.prompt, f"{label} · {model} · {req.steps} steps · {req.scheduler} · seed {req.seed}",
                          baseline.image, result.image, slide_numbers(baseline, run), rows, baseline.frontier,
                          shipped, baseline.latency_s, y=y, footer="DiffScope")
    slide_path = out / "diffscope-slide.png"
    slide.savefig(slide_path, dpi=150)  # the full 16:9 canvas: no tight bounding box
    shutil.copy(slide_path, pack / "slide.png")
    figures = {"tradeoff": tradeoff_figure(rows, baseline.frontier, shipped, baseline.latency_s, y=y)}
    signals = result.signals or {}
    tokens = baseline.tokens[0] if baseline.tokens else []
    if signals.get("attention_maps"):
        figures["cross_attention"] = X.cross_attention_figure(signals["attention_maps"], tokens,
                                                              timesteps=result.timesteps)
    if signals.get("cross_attn_convergence"):
        figures["convergence"] = X.convergence_figure(signals["cross_attn_convergence"])
    if signals.get("feature_drift"):
        figures["feature_drift"] = X.drift_figure(signals["feature_drift"])
    if signals.get("token_rank"):
        figures["token_rank"] = X.token_rank_figure(signals["token_rank"])
    if result.counters:
        figures["counters"] = X.counters_figure(result.counters)
    for name, fig in figures.items():
        for suffix in (".png", ".svg"):
            X.save(fig, pack / f"{name}{suffix}")
    if run is not None:
        save_png(difference_image(first_image(baseline.image), first_image(run.image))[0], pack / "difference.png")
    if model == "default":  # the papers' observations on this model, shipped: figures and their slides
        from ui.observations import pack_files

        for path in pack_files(req.steps):
            (pack / "observations").mkdir(exist_ok=True)
            shutil.copy(path, pack / "observations" / path.name)
    archive = shutil.make_archive(str(out / "diffscope-figures"), "zip", root_dir=pack)
    # Only the two returned files stay: the server's cache cleanup (delete_cache) tracks the files it hands
    # out, so loose figures left here would never be removed.
    shutil.rmtree(pack)
    return [archive, str(slide_path)]
