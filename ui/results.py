"""What the app shows of a run, as plain values for its components: the numbers table, the runs table, the
trade-off plot's rows and figure, and the three images (full compute, accelerated, their difference)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from analysis import live
from viz.images import difference_image, first_image, upscale
from viz.numbers import number, percent, psnr
from viz.plotly_base import empty_figure
from viz.tradeoff import tradeoff_figure

Y_CHOICES = [("closeness to full compute (PSNR)", "psnr"), ("prompt fidelity", "fidelity"),
             ("CLIP score (shapes-CLIP on the default model)", "clip")]
RUN_COLUMNS = ["#", "techniques", "latency (s)", "speed-up", "ideal", "PSNR (dB)", "SSIM", "fidelity", "CLIP score"]


def numbers_markdown(baseline: live.Baseline, run: live.LiveRun | None) -> str:
    lo, hi = baseline.noise
    n = len(baseline.latencies)
    rows = [("latency", f"{baseline.latency_s:.3f} s (median of {n}; spread {lo:.2f}-{hi:.2f}x)",
             "—" if run is None else f"{run.latency_s:.3f} s (1 run, {run.steps_run} steps)")]
    if run is not None:
        ideal = (run.ideal or {}).get("ideal_speedup")
        band = f"noise band {run.speedup_band[0]:.2f}-{run.speedup_band[1]:.2f}x"
        sp = f"**{run.speedup:.2f}x** measured ({band})" + (f" · ideal {ideal:.2f}x from counted work" if ideal else "")
        if run.careful:
            c = run.careful
            sp += (f"<br>careful: **{c['paired_speedup']:.2f}x** (quartiles {c['paired_q1']:.2f}-{c['paired_q3']:.2f}x,"
                   f" {c['rounds']} interleaved pairs)")
        rows.append(("speed-up", "1.00x", sp))
        rows.append(("PSNR / SSIM vs full compute", "∞ / 1", f"{psnr(run.psnr_db)} / {run.ssim:.4f}"))
    fid_b = live.fidelity_of(baseline.quality)
    if fid_b is not None or (run is not None and live.fidelity_of(run.quality) is not None):
        rows.append(("prompt fidelity", percent(fid_b), "—" if run is None else percent(live.fidelity_of(run.quality))))
    unavailable = []
    for name, scores in ((run.quality if run is not None else baseline.quality) or {}).items():
        if name == "fidelity":
            continue
        if scores.get("available") is False:
            unavailable.append(f"{name} ({scores.get('reason', 'unavailable')})")
        elif name == "lpips" and run is not None:
            rows.append(("LPIPS vs full compute", "0", f"{scores['lpips']:.4f}"))
        elif name == "clip_score":
            rows.append(("CLIP score", f"{scores['baseline']:.2f}", "—" if run is None else f"{scores['clip_score']:.2f}"))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = f"| | full compute | accelerated |\n|---|---|---|\n{table}"
    if unavailable:
        text += "\n\n*Not measured here:* " + "; ".join(unavailable)
    if run is not None:
        skipped = live.skipped_summary(run.counters)
        if skipped:
            text += "\n\n**Skipped:** " + "; ".join(skipped)
        if run.speedup_band[0] <= 1.0 <= run.speedup_band[1]:
            text += ("\n\n*The measured speed-up is inside this machine's timing noise: press **Measure carefully** "
                     "for a paired number.*")
        elif run.speedup_band[1] < 1.0:
            text += "\n\n" + slowdown_reason(run)
    return text


def share(x) -> str:
    return number(x, ".1%")


def slowdown_reason(run: live.LiveRun) -> str:
    """Why an accelerated run is slower than full compute on this model, from its counted work: each
    technique's saving as a share of the pipeline, what its own overheads (explicit attention where maps are
    cached or ranked, the ranking itself) take back, and the cost model's note."""
    ideal = run.ideal or {}
    lines = [f"**Slower than full compute here** ({run.speedup:.2f}x, below the timing noise band)."]
    for name, saved in (ideal.get("paper_per_technique") or {}).items():
        net = (ideal.get("per_technique") or {}).get(name)
        line = f"{name}: its skipped work is {share(saved)} of the pipeline"
        if net is not None and net < saved:
            line += f", its own overheads take back {share(saved - net)} (net {share(net)})"
        note = (ideal.get("notes") or {}).get(name)
        lines.append("- " + line + (f"; {note}" if note else ""))
    expected = ideal.get("ideal_speedup")
    if expected is not None:
        lines.append(f"- counted work expects {expected:.2f}x against this baseline ({run.request.attention} attention); "
                     "the rest is time the cost model does not count (hooks, gathers, memory traffic)")
    return "\n".join(lines)


def runs_table(session: live.Session) -> list[list]:
    out = []
    for r in reversed(session.runs):
        ideal = (r.ideal or {}).get("ideal_speedup")
        out.append([r.id, r.label, round(r.latency_s, 3), round(r.speedup, 2), None if ideal is None else round(ideal, 2),
                    "inf" if math.isinf(r.psnr_db) else round(r.psnr_db, 1), round(r.ssim, 4),
                    None if r.fidelity is None else round(r.fidelity, 2),
                    None if live.clip_score_of(r.quality) is None else round(live.clip_score_of(r.quality), 1)])
    return out


def plot_rows(session: live.Session, baseline: live.Baseline | None, current_id: int | None) -> list[dict]:
    rows = []
    for r in session.runs:
        row = r.row()
        row["current"] = r.id == current_id
        row["same_baseline"] = baseline is not None and r.request == baseline.request
        rows.append(row)
    return rows


def shipped_rows(model: str, steps: int) -> list[dict]:
    """The shipped default-model sweep at this step count, when it exists (drawn faintly behind)."""
    if model != "default":
        return []
    try:
        from analysis.eval.sweep_results import load_shipped
    except ImportError:
        return []
    try:
        return load_shipped(steps=steps)
    except (FileNotFoundError, ValueError):
        return []


def export_folder(cache_dir: str) -> Path:
    """A fresh folder for one export inside Gradio's temp folder, where `delete_cache` removes its files (and
    this removes the empty folders earlier exports left)."""
    root = Path(cache_dir) / "diffscope-exports"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        try:
            old.rmdir()  # only empty ones: their files were already deleted
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="export-", dir=root))


def tradeoff(session, baseline, current_id, y, frontier: list | None = None) -> "object":
    """The live trade-off plot; `frontier` (default: the baseline's, else its full-compute point alone) is the
    step-reduction line, drawn as far as it has been measured."""
    if baseline is None:
        return empty_figure("Generate an image to start the trade-off plot.")
    if frontier is None:
        frontier = baseline.frontier or [live.full_compute_point(baseline)]
    return tradeoff_figure(plot_rows(session, baseline, current_id), frontier,
                           shipped_rows(baseline.request.model, baseline.request.steps), baseline.latency_s,
                           y=y or "psnr")


def images(baseline: live.Baseline, run: live.LiveRun | None):
    base = first_image(baseline.image)
    if run is None:
        return upscale(base), None, None
    acc = first_image(run.image)
    diff, _ = difference_image(base, acc)
    return upscale(base), upscale(acc), upscale(diff)
