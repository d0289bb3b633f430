"""`shopsearch bench throughput`: our embedding pipeline vs a naive loop (added to the
`bench` group by indexer/cli/bench_cmds.py)."""
from __future__ import annotations

from pathlib import Path

import click

from indexer.cli.context import Ctx, echo_json, pass_ctx
from indexer.cli.datasets import default_grocery
from shopsearch.errors import ConfigError

@click.command("throughput")
@click.option("--model", default="efficientnet-lite0", show_default=True, help="Model spec (see `index build`).")
@click.option("--device", "device", default=None, help="cpu | cuda | cuda:N (default: the global --device).")
@click.option("--images", type=click.IntRange(16, 1_000_000), default=512, show_default=True,
              help="How many images both runs embed.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]), default="auto", show_default=True,
              help="Our pipeline's precision. auto on a CPU: one batch of 16 of the benchmark's images is timed "
                   "in fp32, in bf16 where the CPU has AMX or AVX512-BF16 (weights converted once), and in int8 "
                   "where the model has a calibration (`shopsearch model quantize`; the choice on AVX2-only "
                   "CPUs), interleaved, best of 4 each, and the fastest kept (every time is printed); bf16 on a "
                   "GPU that has it; else fp32. The naive loop is always fp32.")
@click.option("--source", default="auto", show_default=True,
              help="auto (Grocery Store photos when present, else generated 1600x1200 JPEGs) | grocery | "
                   "synthetic | a folder of images")
@click.option("--grocery-dir", envvar="SHOPSEARCH_GROCERY_DIR", type=click.Path(file_okay=False), default=None,
              help="The Grocery Store dataset (--source grocery or auto). Default: ../shared/datasets/grocerystore "
                   "beside the repository, from any directory.")
@click.option("--batch-size", type=int, default=None, help="Our pipeline's batch (default: tuned).")
@click.option("--workers", type=int, default=None, help="Our pipeline's decode workers (default: tuned).")
@click.option("--executor", type=click.Choice(["auto", "replicas", "thread", "process", "inline", "gpu"]), default="auto",
              show_default=True)
@click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="torch.compile our pipeline's model (auto: CPU runs of 4,096+ images); "
                                      "the first repeat then includes the compilation.")
@click.option("--repeats", type=click.IntRange(1, 10), default=1, show_default=True,
              help="Time our pipeline this many times and keep the best (each into a fresh cache).")
@click.option("--no-naive", is_flag=True, help="Skip the naive loop (ratio is then null).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def throughput(c: Ctx, model: str, device: str | None, images: int, precision: str, source: str,
               grocery_dir: str | None,
               batch_size: int | None, workers: int | None, executor: str, compile_mode: str, repeats: int,
               no_naive: bool, as_json: bool) -> None:
    """Images/s from JPEG files to saved vectors: our pipeline and the naive loop, same images, same run."""
    from shopsearch.evaluation.throughput import grocery_jpegs, run_throughput

    grocery = Path(grocery_dir).resolve() if grocery_dir else default_grocery()
    found = source in ("auto", "grocery") and bool(grocery_jpegs(1, grocery))
    if source == "grocery" and not found:
        raise ConfigError(f"--source grocery: no Grocery Store photos under {grocery} (dataset/train.txt and "
                          "dataset/test.txt): pass --grocery-dir or set SHOPSEARCH_GROCERY_DIR")
    fallback = source == "auto" and not found
    if fallback:
        click.echo(f"note: no Grocery Store photos under {grocery}: timing generated 1600x1200 JPEGs instead "
                   "(--grocery-dir or SHOPSEARCH_GROCERY_DIR names the dataset)", err=True)
    r = run_throughput(model, device or c.settings.device, images=images, precision=precision, source=source,
                       batch_size=batch_size, workers=workers, executor=executor, naive=not no_naive,
                       compile=compile_mode, repeats=repeats, grocery=grocery, settings=c.settings)
    if as_json:
        echo_json({**r.to_dict(), "synthetic_fallback": fallback,  # auto found no dataset: generated images
                   "grocery_dir": str(grocery) if source in ("auto", "grocery") else None})
        return
    click.echo(f"{r.model} on {r.device} ({r.machine}, {r.cpus} CPUs, load {r.load_avg_1m}): "
               f"{r.images} images {r.image_size} from {r.source}")
    if r.precision_probe_ms:
        click.echo("  precision probe (ms per batch of 16): "
                   + ", ".join(f"{k} {v}" for k, v in r.precision_probe_ms.items()) + f" -> {r.precision}")
    click.echo(f"  pipeline ({r.precision}{', compiled' if r.compiled else ''}, batch {r.batch_size}, "
               f"{r.workers} {r.executor} workers): {r.images_per_s:.1f} img/s (runs: {', '.join(map(str, r.runs_s))} s)")
    if r.naive_images_per_s:
        click.echo(f"  naive loop (fp32, batch 64, no workers): {r.naive_images_per_s:.1f} img/s; "
                   f"ratio {r.ratio:.2f}x")
