"""Sweep grids: which settings a sweep runs, named and parsed from a SPEC string.

A *setting* is a name, a technique family, a tuple of `--accel` specs (analysis.accel.parse_accel syntax)
and, optionally, a scheduler that differs from the sweep's (the PHAST-on-another-scheduler ablation). The
setting name is the row key of the sweep table, so it must stay stable across reruns (resume) and shards.

SPEC (`python -m analysis sweep --grid SPEC`): comma-separated parts, each one of
- a named grid: `default` (the issue's grid: step ladder, reuse R count 0..steps/2 with HURRY, PHAST and
  strided CRCR, T-GATE gate steps, Faster-Diffusion presets/strides with and without noise, AT-EDM ratios
  with and without DSAP, allowed combinations), `ablations` (the papers' ablations), `pruning` (AT-EDM's
  rankings like for like at every ratio, issue 17), `peers` (DeepCache,
  tomesd; needs requirements-peers.txt), `smoke` (four cheap settings for a first check);
- a family of the default grid: `steps`, `reuse`, `tgate`, `fastdiff`, `atedm`, `combo`;
- a path to a text file with one setting per line, `NAME = SPEC [& SPEC ...]` (`#` starts a comment);
- an inline setting `NAME=SPEC[&SPEC...]`, e.g. `tg6=tgate:gate_step=6`.
Every setting is validated (parse_accel + check_combination) before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.accel.atedm import PRUNING_RATIOS
from analysis.accel.reuse_policy import phast_policy
from analysis.accel.tgate import default_gate_step

NAMED = ("default", "ablations", "pruning", "peers", "smoke")


@dataclass(frozen=True)
class Setting:
    name: str
    technique: str  # family: a technique's name, combo, peer or ablation
    specs: tuple[str, ...]  # --accel specs; peers use "peer:<name>:key=value,..."
    scheduler: str | None = None  # None = the sweep's scheduler

    @property
    def is_peer(self) -> bool:
        return any(s.startswith("peer:") for s in self.specs)

    def configs(self) -> tuple:
        """The technique configs (not for peers)."""
        from analysis.accel import parse_accel

        return tuple(parse_accel(s) for s in self.specs if not s.startswith("peer:"))


def _family(technique):
    """The builder of a technique's family: steps -> its settings (`Technique.grid`)."""
    return lambda steps: [Setting(name, technique.name, specs) for name, specs in technique.grid(steps)]


def _family_builders() -> dict:
    """Each technique's family of the default grid (its `Technique.grid`), step reduction first, then the
    combinations."""
    from analysis.accel import registry

    techniques = sorted(registry().values(), key=lambda t: not t.is_step_reduction)
    return {**{t.name: _family(t) for t in techniques}, "combo": _combo}


def _combo(steps: int) -> list[Setting]:
    g = max(2, default_gate_step(steps))
    r = max(1, steps // 5)
    short = max(2, round(0.7 * steps))
    return [
        Setting(f"combo-tgate-g{g}+reuse-self-r{r}", "combo",
                (f"tgate:gate_step={g},sp_interval=1,fi_interval=1", f"reuse:policy=hurry,reuse_steps={r},scope=self")),
        Setting(f"combo-steps-{short}+tgate-g{default_gate_step(short)}", "combo",
                (f"steps:steps={short}", f"tgate:gate_step={max(2, default_gate_step(short))}")),
        Setting("combo-fastdiff+atedm-50", "combo", ("fastdiff:noise=true", "atedm:ratio=0.5")),
        Setting(f"combo-steps-{short}+reuse-r{max(1, short // 5)}", "combo",
                (f"steps:steps={short}", f"reuse:policy=hurry,reuse_steps={max(1, short // 5)}")),
    ]


def _ablations(steps: int) -> list[Setting]:
    """The papers' ablations (issue 9 item 5); each is comparable to a default-grid row at equal ratio/count."""
    r = (steps + 1) // 3
    out = [Setting(f"abl-atedm-63-{rank}", "ablation", (f"atedm:ratio=0.63,ranking={rank}",))
           for rank in ("gwpr", "random", "cross")]
    out += [Setting("abl-atedm-63-gwpr-nodsap", "ablation", ("atedm:ratio=0.63,dsap=false",))]
    paper = _paper_keys(steps)
    uniform = tuple(sorted({int(round(x)) for x in np.linspace(0, steps - 1, len(paper))}))
    for noise in ("true", "false"):
        out.append(Setting(f"abl-fastdiff-nonuniform-noise-{noise}", "ablation",
                           ("fastdiff:key_steps=" + "+".join(map(str, paper)) + f",noise={noise}",)))
        out.append(Setting(f"abl-fastdiff-uniform-noise-{noise}", "ablation",
                           ("fastdiff:key_steps=" + "+".join(map(str, uniform)) + f",noise={noise}",)))
    out += [Setting(f"abl-reuse-hurry-r{r}-{scope}", "ablation", (f"reuse:policy=hurry,reuse_steps={r},scope={scope}",))
            for scope in ("self", "cross", "both")]
    phast = phast_policy(steps, r)
    if phast is not None:
        for scheduler in ("dpm", "euler"):
            out.append(Setting(f"abl-phast-ddim-policy-on-{scheduler}", "ablation", (f"reuse:policy={phast}",), scheduler))
            out.append(Setting(f"abl-hurry-r{r}-on-{scheduler}", "ablation",
                               (f"reuse:policy=hurry,reuse_steps={r}",), scheduler))
    return out


def _pruning(steps: int) -> list[Setting]:
    """AT-EDM's rankings compared like for like at every ratio of the default grid (issue 17): G-WPR as
    shipped, with one mask shared by both CFG branches and with RMS over heads; random drawn every call or
    once per layer (shared); cross-attention (shared). `analysis.eval.pruning_share.variants`."""
    from analysis.eval.pruning_share import variants

    return [Setting(f"prune-{int(r * 100)}-{name}", "ablation", (spec,))
            for r in PRUNING_RATIOS for name, spec in variants(r).items()]


def _paper_keys(steps: int) -> tuple[int, ...]:
    from analysis.accel.fastdiff import FastDiffConfig

    return FastDiffConfig().resolve_key_steps(steps)


def _peers(steps: int) -> list[Setting]:
    return [Setting(f"peer-deepcache-i{i}", "peer", (f"peer:deepcache:cache_interval={i},cache_branch_id=0",))
            for i in (2, 3, 5)] + [Setting(f"peer-tomesd-{int(r * 100)}", "peer", (f"peer:tomesd:ratio={r}",))
                                   for r in (0.3, 0.5)]


def _smoke(steps: int) -> list[Setting]:
    return [Setting(f"steps-{steps // 2}", "steps", (f"steps:steps={steps // 2}",)),
            Setting(f"tgate-g{default_gate_step(steps)}", "tgate", (f"tgate:gate_step={default_gate_step(steps)}",)),
            Setting(f"reuse-hurry-r{steps // 4}", "reuse", (f"reuse:policy=hurry,reuse_steps={steps // 4}",)),
            Setting("atedm-50", "atedm", ("atedm:ratio=0.5",))]


def named_grid(name: str, steps: int) -> list[Setting]:
    builders = _family_builders()
    if name == "default":
        return [s for build in builders.values() for s in build(steps)]
    if name in builders:
        return builders[name](steps)
    if name == "ablations":
        return _ablations(steps)
    if name == "pruning":
        return _pruning(steps)
    if name == "peers":
        return _peers(steps)
    if name == "smoke":
        return _smoke(steps)
    raise ValueError(f"unknown grid {name!r}; named grids: {', '.join(NAMED + tuple(builders))}")


def _family_of(specs: tuple[str, ...]) -> str:
    names = {s.split(":", 1)[0] for s in specs}
    if "peer" in names:
        return "peer"
    return names.pop() if len(names) == 1 else "combo"


def _parse_line(text: str, where: str) -> Setting:
    name, eq, rest = text.partition("=")
    name = name.strip()
    specs = tuple(p.strip() for p in rest.split("&") if p.strip())
    if not eq or not name or not specs or any(c in name for c in " /,"):
        raise ValueError(f"{where}: expected NAME=SPEC[&SPEC...] with a name free of spaces, '/' and ',', got {text!r}")
    return Setting(name, _family_of(specs), specs)


def parse_grid(spec: str, steps: int) -> list[Setting]:
    """SPEC -> settings (see the module docstring), validated, names unique, order kept."""
    if not spec or not spec.strip():
        raise ValueError("--grid is empty")
    out: list[Setting] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in NAMED or part in _family_builders():
            out += named_grid(part, steps)
        elif Path(part).is_file():
            for i, line in enumerate(Path(part).read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    out.append(_parse_line(line, f"{part}:{i}"))
        elif "=" in part.split(":", 1)[0]:
            out.append(_parse_line(part, "--grid"))
        else:
            raise ValueError(f"--grid: {part!r} is neither a named grid ({', '.join(NAMED)}), a family, a file, "
                             f"nor NAME=SPEC")
    seen: dict[str, Setting] = {}
    for s in out:
        if s.name in seen and seen[s.name] != s:
            raise ValueError(f"--grid: two different settings are named {s.name!r}")
        seen[s.name] = s
    settings = list(seen.values())
    for s in settings:
        validate(s, steps)
    return settings


def validate(setting: Setting, steps: int) -> None:
    """parse_accel + check_combination + the policy length, so that a bad grid fails before the sweep runs."""
    from analysis.accel import check_combination, technique_of
    from analysis.run import RunConfig

    if setting.is_peer:
        from analysis.eval.peers import parse_peer

        for s in setting.specs:
            parse_peer(s)
        return
    try:
        configs = setting.configs()
        check_combination(configs)
        config = RunConfig(prompt="x", steps=steps, accel=configs)
        for c in config.hooked_accel():
            technique_of(c).validate(c, config.accel_steps, "default")
    except (ValueError, TypeError) as err:
        raise ValueError(f"setting {setting.name}: {err}") from None
