"""`shopsearch index ...`: build, update, inspect and roll back the FAISS index."""
from __future__ import annotations

import click

from indexer.build_types import BuildOptions
from indexer.cli.context import Ctx, echo_json, pass_ctx, sigterm_as_interrupt
from indexer.shrink import DEFAULT_MAX_SHRINK


@click.group("index")
def index() -> None:
    """Build and manage the vector index."""


def _wait_option(f):
    return click.option("--wait", is_flag=True,
                        help="If another build, update or rollback is writing this index, wait for it instead "
                             "of failing with exit code 75.")(f)


def _writer(c: Ctx, wait: bool, what: str) -> None:
    """Hold this data dir's index writer lock (shopsearch.index.lock) until the command ends:
    a second build, update or rollback fails at once (IndexBusyError, exit 75) or waits."""
    from shopsearch.index.lock import index_lock

    click.get_current_context().with_resource(index_lock(
        c.settings.index_dir, wait=wait, what=what,
        on_wait=lambda holder: click.echo(f"waiting for {holder} to finish ...", err=True)))


def _perf_options(f):
    f = _wait_option(f)
    f = click.option("--force", is_flag=True,
                     help="build: rebuild even when the serving build is up to date; update: compact the "
                          "serving build's segments into a fresh index (from the vector cache).")(f)
    f = click.option("--metrics-file", envvar="SHOPSEARCH_METRICS_FILE", default=None,
                     help="Also write the run's figures in the Prometheus text format to this file (for "
                          "node_exporter's textfile collector; written atomically), or - for stdout.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")(f)
    f = click.option("--ray-actors", type=click.IntRange(1), default=None,
                     help="--engine ray: embedding actors (default: one per GPU, else one per 4 CPUs).")(f)
    f = click.option("--ray-address", default=None,
                     help="--engine ray: the cluster to join (default SHOPSEARCH_RAY_ADDRESS; unset: start a "
                          "local Ray sized to this machine).")(f)
    f = click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
                     help="Where images are embedded: this machine, or a Ray cluster (pip install "
                          "'shopsearch[ray]'; default SHOPSEARCH_ENGINE, else local).")(f)
    f = click.option("--compile", "compile_mode", type=click.Choice(["auto", "on", "off"]), default=None,
                     help="torch.compile the model first (default: SHOPSEARCH_COMPILE, else auto: CPU jobs of "
                          "4,096+ images, where it repays its compilation).")(f)
    f = click.option("--max-shrink", type=click.FloatRange(0, 1), default=DEFAULT_MAX_SHRINK, show_default=True,
                     envvar="SHOPSEARCH_MAX_SHRINK",
                     help="Refuse to publish a build holding fewer than (1 - this) of the serving build's "
                          "vectors (an unmounted share, a wrong --database-url); 1 allows any shrink.")(f)
    f = click.option("--rescan/--no-rescan", default=True, show_default=True,
                     help="First rescan the image files (--rescan-scope) and re-hash those changed on disk since "
                          "the import.")(f)
    f = click.option("--rescan-scope", type=click.Choice(["auto", "files", "dirs"]), default="auto",
                     show_default=True,
                     help="What the rescan stats, compared with the stored stat snapshot. auto: the folders, the "
                          "files of folders whose mtime moved (files added, deleted, renamed over) and a rolling "
                          "window of the others, so a file rewritten in place (its folder's mtime unchanged) is "
                          "seen within 16 rescans (at every rescan up to 65,536 images); files: every file "
                          "(sees rewrites in place at once); dirs: auto without the window.")(f)
    f = click.option("--verify-hashes", is_flag=True,
                     help="Re-hash every image file, not only those whose size or mtime moved (catches files "
                          "rewritten in place with their old size and mtime; reads the whole catalogue).")(f)
    f = click.option("--chunk-size", type=int, default=512, show_default=True, hidden=True,
                     help="Vectors per cache chunk (work lost at most when a run is killed).")(f)
    f = click.option("--executor", type=click.Choice(["auto", "replicas", "thread", "process", "inline", "gpu"]), default="auto",
                     show_default=True, help="Where images are decoded: one single-threaded model replica per process (the "
                          "default for EfficientNet-Lite0 on <= 4 CPU cores), threads, processes, or nvJPEG on the GPU.")(f)
    f = click.option("--workers", type=int, default=None, help="Decoding workers (default: tuned to the machine).")(f)
    f = click.option("--batch-size", type=int, default=None, help="Images per model call (default: 16 CPU, 256 GPU).")(f)
    f = click.option("--index", "index_type", default="keep", show_default=True,
                     help="auto (flat, then hnsw, then ivfpq as the catalogue grows) | flat | hnsw | ivfpq | "
                          "any FAISS factory string. keep: the serving build's type when it was named with "
                          "--index (later builds and updates keep an explicit choice), else auto.")(f)
    return f


def _builder(c: Ctx, embedder, store, engine: str | None, ray_address: str | None, batch_size: int | None,
             ray_actors: int | None):
    """The local IndexBuilder, or the Ray one (imported only then: --engine local never imports ray)."""
    if (engine or c.settings.engine) != "ray":
        return c.index_builder(embedder, store)
    from indexer.ray_engine import RayIndexBuilder, connect

    resources = connect(ray_address or c.settings.ray_address)
    click.echo(f"engine: ray, {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs", err=True)
    return RayIndexBuilder(embedder, c.catalogue(), store, c.settings.vector_cache_dir, resources,
                           models_dir=c.settings.models_dir, batch_size=batch_size, actors=ray_actors,
                           calibrator=c.build_calibrator(embedder, store))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _calibration_of(c: Ctx, build_id: str | None) -> dict | None:
    """What the build's confidence is calibrated on (Calibration.describe), for the build's output."""
    from shopsearch.confidence import load_calibration

    if not build_id:
        return None
    return load_calibration(c.index_store().build_dir(build_id), build_id).describe()


def calibration_line(cal: dict) -> str:
    """One line saying which calibration is in force (labelled photos, or the catalogue-only fallback)."""
    if cal.get("status") != "calibrated":
        return f"confidence: not calibrated ({cal.get('reason')})"
    if cal.get("source") == "labelled":
        return (f"confidence: calibrated on {cal['samples']} labelled shopper photos "
                f"(features {'+'.join(cal['features'])})")
    return (f"confidence: catalogue-only fallback, calibrated on {cal['samples']} held-out catalogue photos "
            f"(features {'+'.join(cal['features'])}); {cal['fallback'].split('; ', 1)[1]}")


def _print_report(report, as_json: bool, metrics_file: str | None = None, engine: str = "local",
                  calibration: dict | None = None) -> None:
    if metrics_file:
        from indexer.build_metrics import write_build_metrics

        text = write_build_metrics(report, metrics_file)
        if text is not None:
            click.echo(text, nl=False)
            return
    from shopsearch.catalogue.download_http import mask_url

    if as_json:
        d = report.to_dict()  # a failed image may be named by its URL, password and all: never shown
        d["failed"] = [{**f, "path": mask_url(f["path"]), "reason": mask_url(f["reason"])} for f in d["failed"]]
        echo_json({**d, "engine": engine, **({"calibration": calibration} if calibration else {})})
        return
    if report.up_to_date:
        click.echo(f"up to date: build {report.build_id} serves {report.vectors} vectors ({report.index_type}, "
                   f"model {report.model}); nothing to do ({report.seconds:.1f}s; --force rebuilds)")
        return
    scan = report.rescan
    if scan is not None and scan.rehashed:
        click.echo(f"files on disk: {scan.changed} changed, {scan.missing} missing, {scan.invalid} unusable, "
                   f"{scan.restored} restored ({scan.rehashed} re-hashed of {scan.images})", err=True)
    line = (f"build {report.build_id} ({report.mode}): {report.vectors} vectors ({report.index_type}), "
            f"embedded {report.embedded}, reused {report.reused}, failed {len(report.failed)}, "
            f"{report.seconds:.1f}s ({report.images_per_s:.1f} img/s, engine {engine})")
    if report.update is not None:
        u = report.update
        line += f"; +{u.added} new, ~{u.changed} changed, -{u.removed} removed"
        if u.rebuild_reason:
            line += f"; rebuilt from the vector cache ({u.rebuild_reason})"
    if report.adapt_rounds:
        line += f"; catalogue adapted to the shopper photos ({report.adapt_rounds} rounds)"
    if report.shopper_views:
        line += f"; {report.shopper_views} synthetic shopper views blended into each catalogue image"
    if report.segments is not None and (report.segments.delta or report.segments.dead):
        sg = report.segments
        line += f"; segments: base {sg.base}, delta {sg.delta}, tombstoned {sg.dead}"
    probe = report.recall_probe
    if probe is not None and probe["reached"]:
        line += f"; HNSW recall@10 {probe['recall_at_10']:.3f} of exact at efSearch {probe['ef_search']}"
    click.echo(line)
    if probe is not None and not probe["reached"]:
        from shopsearch.index.recall_probe import probe_message

        click.echo(f"warning: {probe_message(probe)}", err=True)
    if calibration:
        click.echo(calibration_line(calibration), err=True)
    for image_id, path, reason in report.failed[:20]:
        click.echo(f"  failed image {image_id} {mask_url(path)}: {mask_url(reason)}", err=True)
    if len(report.failed) > 20:
        click.echo(f"  ... and {len(report.failed) - 20} more (see report.json in the build directory)", err=True)


@index.command("build")
@click.option("--model", default=None,
              help="efficientnet-lite0 | efficientnet-lite0@SIZE[/CROP] | openclip:ARCH/PRETRAINED | openclip:ARCH@CHECKPOINT | colorhist | auto; "
                   "append +bf16, +fp32 or +int8 to fix the precision (else --precision decides). Default: the "
                   "serving build's model (a rebuild never switches models unless --model says so); for a first "
                   "build SHOPSEARCH_MODEL, else auto.")
@click.option("--precision", envvar="SHOPSEARCH_PRECISION", type=click.Choice(["auto", "fp32", "bf16", "int8"]),
              default="auto", show_default=True,
              help="Precision when the model spec names none. auto: bf16 on GPUs that have it, fp32 on CPUs without; on "
                   "CPUs with AVX512-BF16 or AMX, a batch of 4 is timed (best of 2) in fp32 and in bf16 (weights converted "
                   "to bfloat16 once, at load) and the faster kept, remembered per model architecture, CPU and "
                   "torch version under ~/.cache/shopsearch (SHOPSEARCH_CACHE_DIR); a serving build of the same "
                   "model keeps its precision. What the choice rests on, measured end to end on a 2-core AMD "
                   "EPYC with AVX512-BF16 (no AMX) for ViT-B-32 and EfficientNet-Lite0: benchmarks/RESULTS.md, "
                   "bf16_*_epyc_bf16_* and clip_retrieval_vs_shopsearch_epyc_bf16_*.")
@click.option("--shadow", is_flag=True,
              help="Build beside the serving build without serving it: compare the two with `index compare`, "
                   "then `index promote` it (or build another).")
@click.option("--centre", type=click.Choice(["keep", "on", "off"]), default="keep", show_default=True,
              help="Per-domain mean centring: catalogue vectors centred on the catalogue's mean, queries on "
                   "shopper photos' (no labels; helps most with one studio photo per product). keep: as the "
                   "serving build.")
@click.option("--centre-sample", "centre_sample", default=None,
              help="With --centre on: a folder of unlabelled shopper photos, or 'feedback' (the query vectors of "
                   "the searches logged with this model).")
@click.option("--adapt", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Move each centred catalogue vector toward the shopper photos nearest to it (no labels; "
                   "helps a catalogue of one studio photo per product). auto: on for such a catalogue when "
                   "--centre on is given a sample, else as the serving build.")
@click.option("--views", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Blend synthetic shopper photos of each catalogue image (backgrounds, angles, light, partial "
                   "views; embedded once and cached) into its vector. auto: on for a catalogue of about one "
                   "image per product.")
@_perf_options
@pass_ctx
def build_cmd(c: Ctx, model: str, precision: str, shadow: bool, centre: str, centre_sample: str | None, adapt: str,
              views: str, index_type: str, batch_size: int | None, workers: int | None, executor: str,
              chunk_size: int, rescan: bool, max_shrink: float, verify_hashes: bool, compile_mode: str,
              as_json: bool, wait: bool, metrics_file: str | None, engine: str | None, ray_address: str | None,
              ray_actors: int | None, force: bool, rescan_scope: str) -> None:
    """Embed every catalogue image (reusing cached vectors) and publish a new index build
    (nothing, and "up to date", when the serving build already holds exactly these images).
    A rebuild keeps the serving build's model unless --model names another."""
    from indexer.cli.build_guard import PublishWatch, centre_sample as sample_of, check_index_option

    check_index_option(index_type)  # first: a misspelt --index costs no model load
    from indexer.shrink import refuse_empty_catalogue
    from shopsearch.app import model_for_build, model_to_build

    _writer(c, wait, "index build")
    store = c.index_store()
    refuse_empty_catalogue(store, c.catalogue(), max_shrink)  # before the model loads
    spec, kept = model_to_build(c.settings, store, model)
    if kept is not None:
        click.echo(f"model: keeping {kept.model_name}, the model of the serving build {kept.build_id} "
                   "(`--model M` switches models)", err=True)
    embedder, choice = model_for_build(c.settings, store, spec, precision)
    if choice.probe_ms:
        click.echo(f"precision auto: {choice.precision} (ms per probe batch: "
                   + ", ".join(f"{k} {v}" for k, v in choice.probe_ms.items())
                   + ("; measured earlier on this machine" if choice.cached else "") + ")", err=True)
    if shadow:
        from shopsearch.index.shadow import ShadowTarget

        store = ShadowTarget(store)
    store = watch = PublishWatch(store)  # once published, Ctrl-C/SIGTERM wait for the report (exit 0)
    builder = _builder(c, embedder, store, engine, ray_address, batch_size, ray_actors)
    click.echo(f"model: {embedder.name} ({embedder.fingerprint}) on {embedder.device}", err=True)
    if centre == "on":
        builder.query_sample = sample_of(c, embedder, builder, centre_sample, workers, not as_json)

    def show_plan(plan) -> None:
        click.echo(f"plan: {plan.images} images -> {plan.index_type} index of dim {plan.dim}, "
                   f"estimated memory {_mib(plan.estimated_bytes)}", err=True)

    options = BuildOptions(index_type, batch_size, workers, not as_json, executor, chunk_size, rescan,
                           compile_mode or c.settings.pipeline.compile, verify_hashes, max_shrink,
                           force or shadow,  # a shadow asked for is built, even beside an identical serving build
                           centre=centre, rescan_scope=rescan_scope, adapt=adapt, views=views)
    with watch:
        with sigterm_as_interrupt():
            report = builder.build(options, on_plan=show_plan)
        watch.hold()  # sigterm_as_interrupt put SIGTERM's old handler back
        _print_report(report, as_json, metrics_file, engine or c.settings.engine,
                      None if report.up_to_date else _calibration_of(c, report.build_id))
        if shadow and not as_json and not metrics_file:
            click.echo(f"shadow build {report.build_id} staged (not serving): `shopsearch index compare`, then "
                       "`shopsearch index promote`", err=True)


@index.command("update")
@click.option("--model", default=None, help="Defaults to the model of the serving build (it must match).")
@_perf_options
@pass_ctx
def update_cmd(c: Ctx, model: str | None, index_type: str, batch_size: int | None, workers: int | None,
               executor: str, chunk_size: int, rescan: bool, max_shrink: float, verify_hashes: bool,
               compile_mode: str, as_json: bool, wait: bool, metrics_file: str | None, engine: str | None,
               ray_address: str | None, ray_actors: int | None, force: bool, rescan_scope: str) -> None:
    """Embed only new or changed images, drop removed ones, publish the result as a new build."""
    from indexer.cli.build_guard import PublishWatch, check_index_option

    check_index_option(index_type)  # first: a misspelt --index costs no model load
    _writer(c, wait, "index update")
    from indexer.shrink import refuse_empty_catalogue

    store = c.index_store()
    refuse_empty_catalogue(store, c.catalogue(), max_shrink)  # before the model loads
    manifest = store.current_manifest()
    store = watch = PublishWatch(store)  # once published, Ctrl-C/SIGTERM wait for the report (exit 0)
    embedder = c.model_for_index(model)
    click.echo(f"updating {'build ' + manifest.build_id if manifest else 'an empty index'} "
               f"with {embedder.name} on {embedder.device}", err=True)
    builder = _builder(c, embedder, store, engine, ray_address, batch_size, ray_actors)
    options = BuildOptions(index_type, batch_size, workers, not as_json, executor, chunk_size, rescan,
                           compile_mode or c.settings.pipeline.compile, verify_hashes, max_shrink, force,
                           rescan_scope=rescan_scope)
    with watch:
        with sigterm_as_interrupt():
            report = builder.update(options)
        watch.hold()  # sigterm_as_interrupt put SIGTERM's old handler back
        _print_report(report, as_json, metrics_file, engine or c.settings.engine,
                      None if report.up_to_date else _calibration_of(c, report.build_id))


@index.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--deep", is_flag=True,
              help="Also compare every image's content hash with the build's and stat every file "
                   "(slow on big catalogues; the default compares counts and ids only).")
@pass_ctx
def status_cmd(c: Ctx, as_json: bool, deep: bool) -> None:
    """How far the serving index lags the catalogue."""
    from indexer.status import index_status
    from shopsearch.index.recall_probe import probe_message

    st = index_status(c.catalogue(create=False), c.index_store(), deep=deep)
    if as_json:
        echo_json(st.to_dict())
        return
    if st.build_id is None:
        click.echo(f"no index yet; {st.images_ok} catalogue images to index ("
                   + ("`shopsearch index build`)" if st.images_ok else
                      "import a catalogue first: `shopsearch catalogue import FILE`)"))
        return
    if st.degraded:
        click.echo(f"degraded: {st.degraded} (`shopsearch index build` to replace it)", err=True)
    click.echo(f"serving build {st.build_id}: {st.vectors} vectors, {st.index_type}, model {st.model}")
    if st.recall_probe:
        click.echo(f"search: {probe_message(st.recall_probe)}")
    click.echo(f"catalogue: {st.images_ok} indexable images, {st.images_failed} unusable")
    if st.deep:
        click.echo(f"lag: {st.missing} to add, {st.changed} changed, {st.stale} to remove")
    else:
        click.echo(f"lag: {st.missing} to add, {st.stale} to remove (ids only; --deep also checks content "
                   "and files on disk)")
    if st.files_changed_on_disk:
        click.echo(f"files: {st.files_changed_on_disk} changed or gone on disk since they were imported")
    if st.folders_changed_on_disk:
        click.echo(f"folders: {st.folders_changed_on_disk} image folders changed on disk since the last rescan "
                   "(files added, deleted or renamed there)")
    if not st.up_to_date:
        click.echo("run `shopsearch index update` to catch up")
    elif st.files_changed_on_disk or st.folders_changed_on_disk:  # a hint the quick check cannot settle
        click.echo("the index holds the catalogue's records, but files changed on disk since: "
                   "`shopsearch index status --deep` says what changed, `shopsearch index update` picks it up")
    else:
        click.echo("up to date")


@index.command("rollback")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_wait_option
@pass_ctx
def rollback_cmd(c: Ctx, as_json: bool, wait: bool) -> None:
    """Serve the previous build again (the current one becomes the previous)."""
    _writer(c, wait, "index rollback")
    store = c.index_store()
    old = store.current_id()
    new = store.rollback()
    manifest = store.current_manifest()
    if as_json:
        echo_json({"build_id": new, "previous_build": old, "vectors": manifest.count if manifest else None})
        return
    click.echo(f"now serving build {new} ({manifest.count if manifest else '?'} vectors); {old} kept as previous")


@index.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_ctx
def list_cmd(c: Ctx, as_json: bool) -> None:
    """The index builds on disk (current *, previous - and shadow s marked)."""
    store = c.index_store()
    cur, prev, shadow = store.current_id(), store.previous_id(), store.shadow_id()
    builds = [{"build_id": m.build_id, "model": m.model_name, "index_type": m.index_type, "vectors": m.count,
               "created": m.created, "current": m.build_id == cur, "previous": m.build_id == prev,
               "shadow": m.build_id == shadow}
              for m in store.list_builds()]
    if as_json:
        echo_json({"builds": builds})
        return
    if not builds:
        click.echo("no index builds here yet (`shopsearch index build` makes the first)")
    for b in builds:
        mark = "*" if b["current"] else ("-" if b["previous"] else ("s" if b["shadow"] else " "))
        click.echo(f"{mark} {b['build_id']}  {b['vectors']:>9} vectors  {b['index_type']:<6} {b['model']}")


def register(cli: click.Group) -> None:
    from indexer.cli.calibrate_cmds import calibrate_cmd

    index.add_command(calibrate_cmd)
    cli.add_command(index)
