"""What `shopsearch classify` commands say: the fine-tune's options (each naming both recipes'
defaults), the metrics, the taxonomy's levels and what routing and fusion will do in searches."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

import click

_FT_HELP = {"epochs": "epochs (at most, with --minutes)",
            "minutes": "time budget: after each epoch, plan only as many more as fit in this many minutes "
                       "from the start"}
#: left out of the generated options (hidden or given by other options)
_NOT_OPTIONS = ("max_steps", "workers", "preload")


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def recipe_defaults(name: str) -> tuple[Any, Any]:
    """(CPU recipe's, GPU recipe's) value of a FinetuneConfig field."""
    from shopsearch.classify.finetune_config import CPU_RECIPE, FinetuneConfig

    gpu = FinetuneConfig.__dataclass_fields__[name].default
    return CPU_RECIPE.get(name, gpu), gpu


def recipes_epilog() -> str:
    """The command's note on which recipe a --finetune run uses."""
    from shopsearch.classify.finetune_config import CPU_RECIPE, FinetuneConfig

    gpu = FinetuneConfig()
    cpu = FinetuneConfig(**CPU_RECIPE)

    def said(cfg: Any) -> str:
        size = (f"as many epochs as fit in {cfg.minutes:g} minutes (at most {cfg.epochs})" if cfg.minutes
                else f"{cfg.epochs} epochs")
        return (f"{size} at {cfg.img_size} px, batches of {cfg.batch_size}, patience {cfg.patience}, "
                f"{cfg.frozen_blocks} first blocks frozen, {cfg.augment} augmentation")

    return ("--finetune trains with the recipe of the device it runs on (--device; auto: a GPU when there is "
            f"one). On a CPU, the CPU recipe: {said(cpu)}. On a GPU, the GPU recipe: {said(gpu)}. An option given "
            "overrides its recipe's value; each option's help names both defaults.")


def ft_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The FinetuneConfig fields as --finetune options, defaulting to None (= the recipe of the device
    the run uses), their help naming the CPU and the GPU recipe's values."""
    from shopsearch.classify.finetune_config import FinetuneConfig  # torch-free: runs when the CLI is imported

    for fld in reversed(fields(FinetuneConfig)):
        if fld.name in _NOT_OPTIONS:
            continue
        kind: Any = float if fld.default is None else type(fld.default)  # the optional ones (minutes) are numbers
        if fld.name == "minutes":  # refused before any image is read, not after the data is split
            kind = click.FloatRange(min=0, min_open=True)
        cpu, gpu = recipe_defaults(fld.name)
        default = (f"CPU recipe {_shown(cpu)}, GPU recipe {_shown(gpu)}" if cpu != gpu
                   else f"{_shown(gpu)} (both recipes)")
        what = _FT_HELP.get(fld.name, fld.name.replace("_", " "))
        f = click.option(f"--{fld.name.replace('_', '-')}", type=kind, default=None,
                         help=f"(--finetune) {what} [default: {default}]")(f)
    return f


def single_level(m: dict[str, Any]) -> bool:
    """True when the metrics are of a single-level taxonomy (the coarse level is the fine one)."""
    return bool(m.get("coarse", {}).get("same_as_fine"))


def print_metrics(title: str, m: dict[str, Any], levels: bool = True) -> None:
    """The figures in one line, and the most confused pairs. A single-level taxonomy gets no coarse
    figures; `levels`: say that it is single-level (False where an earlier line said so)."""
    fine = f"top-1 {m['fine']['top1']:.2%} top-5 {m['fine']['top5']:.2%}"
    if single_level(m):
        said = f"; {levels_said(m['fine']['classes'], m['fine']['classes'])}" if levels else ""
        click.echo(f"{title}: {m['samples']} images; {fine}{said}")
    else:
        click.echo(f"{title}: {m['samples']} images; fine ({m['fine']['classes']} classes) {fine}; coarse "
                   f"({m['coarse']['classes']} classes) top-1 {m['coarse']['top1']:.2%} top-5 "
                   f"{m['coarse']['top5']:.2%}")
    for p in m.get("most_confused", [])[:5]:
        click.echo(f"  {p['true']} -> {p['predicted']}: {p['count']}")


def levels_said(n_fine: int, n_coarse: int) -> str:
    """The taxonomy in a few words: "11 single-level categories (no coarse level)" or "11 fine / 4
    coarse categories"."""
    if n_fine == n_coarse:
        return f"{n_fine} single-level categories (no coarse level)"
    return f"{n_fine} fine / {n_coarse} coarse categories"


def routing_lines(th: Any, fusion_on: bool) -> list[str]:
    """What searches will do with the classifier, without printing a threshold above 1 as if it
    could fire: fused into the ranking (`fusion_on`, SHOPSEARCH_FUSION, and a weight chosen on
    validation), plain similarity (fusion on, weight 0), or routed by the thresholds (fusion off)."""
    def part(name: str, value: float) -> str:
        return f"{name} when p >= {value:.3f}" if value <= 1.0 else f"{name}: never ({th.target:.0%} not reachable)"

    routing = (f"routing (precision target {th.target:.0%} on validation): {part('filter', th.filter)}; "
               f"{part('top two', th.top2).replace('p >=', 'p1+p2 >=')}")
    if th.val_samples <= 0:  # nothing was chosen (the no-validation warning says why)
        return [routing]
    if not fusion_on:
        tail = (f"; fusion weight {th.fusion:g} not used: fusion is off (SHOPSEARCH_FUSION=off; per search "
                "--fusion / fusion=on)" if th.fusion > 0 else "")
        return [routing + tail]
    off = "with fusion off (SHOPSEARCH_FUSION=off, search --no-fusion, fusion=off per query)"
    if th.fusion > 0:
        return [f"searches fuse the predicted category into the ranking (fusion is on by default; weight "
                f"{th.fusion:g}, chosen on validation)", f"{off}: {routing}"]
    return ["fusion weight 0 (validation preferred plain similarity): with fusion on, the default, searches "
            "rank by similarity alone", f"{off}: {routing}"]
