"""`shopsearch classify ...`: train, evaluate and install category classifiers; tag products."""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from indexer.cli.classify_text import ft_options, levels_said, print_metrics, recipes_epilog, routing_lines
from indexer.cli.context import Ctx, echo_json, pass_ctx


@click.group("classify")
def classify() -> None:
    """Category classifiers: tag uncategorised products and route searches."""


def _embedder(c: Ctx, model: str | None):
    """The model to classify with: --model, else the serving index's model, else the configured one."""
    return c.model_for_index(model)


def _labelled(c: Ctx, spec: str | None):
    from shopsearch.classify.data import catalogue_images, read_labelled

    return read_labelled(spec) if spec else catalogue_images(c.catalogue())


def _split(c: Ctx, train_spec: str | None, val_spec: str | None, val_fraction: float):
    from shopsearch.classify.data import stratified_holdout
    from shopsearch.errors import ClassifierError

    train = _labelled(c, train_spec)
    if not train:
        raise ClassifierError("no labelled images: import products with categories first (or pass --train)")
    if val_spec:
        return train, _labelled(c, val_spec)
    return stratified_holdout(train, val_fraction)


def train_head_for(c: Ctx, emb, train, val, hidden: int = 0, epochs: int = 300, target: float = 0.97,
                   workers: int = 2, progress: bool = True, refit: bool = True, views: int = 0):
    """(artefact, path): the frozen head for `emb` on labelled images (cached vectors), installed
    where search finds it (`classify train` and `demo`); `views` synthetic views of each
    training image (cached too) added to the head's training samples."""
    from shopsearch.classify.artefact import artefact_path
    from shopsearch.classify.training import train_frozen
    from shopsearch.classify.vectors import embed_labelled

    xs, train = embed_labelled(emb, train, c.settings.vector_cache_dir, progress, workers)
    xv, val = embed_labelled(emb, val, c.settings.vector_cache_dir, progress, workers)
    extra = None
    if views > 0 and train:
        import numpy as np

        from shopsearch.classify.photo_views import view_vectors
        from shopsearch.images import sha256_file

        pairs = [(i.path, i.sha256 or sha256_file(i.path)) for i in train]
        vv, ok = view_vectors(emb, pairs, views, c.settings.vector_cache_dir, progress=progress)
        src = np.repeat(np.flatnonzero(ok), views)
        extra = (vv[ok].reshape(-1, vv.shape[2]), src)
    art = train_frozen(xs, train, xv, val, emb.fingerprint, emb.name, hidden=hidden, epochs=epochs, target=target,
                       refit=refit, views=extra)
    return art, art.save(artefact_path(c.settings.classifier_dir, emb.fingerprint))


@classify.command("train", epilog=recipes_epilog())
@click.option("--model", default=None, help="Embedder (default: the serving index's model).")
@click.option("--train", "train_spec", default=None,
              help="Labelled images instead of the catalogue's: grocerystore:ROOT:SPLIT[+SPLIT] | imagefolder:ROOT")
@click.option("--val", "val_spec", default=None, help="Validation images (same syntax); default: a held-out share.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True)
@click.option("--target", type=float, default=0.97, show_default=True,
              help="Routing precision the thresholds are chosen for on the validation images.")
@click.option("--hidden", type=int, default=0, show_default=True, help="Frozen head: MLP width (0 = linear).")
@click.option("--head-epochs", type=int, default=300, show_default=True)
@click.option("--views", type=click.IntRange(0, 16), default=None,
              help="Frozen head: synthetic shopper-like views of each training image (crops, angle, light; "
                   "studio shots on backgrounds) added to its training samples, embedded once and cached "
                   "[default: 1, chosen on Grocery Store val; 0 = off].")
@click.option("--finetune", is_flag=True, help="Fine-tune the EfficientNet-Lite0 backbone too (a new embedder).")
@click.option("--name", default="finetuned", show_default=True, help="--finetune: saved as <data dir>/models/NAME.pt")
@click.option("--max-steps", type=int, default=None, hidden=True)
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes reading the photos [default: 2; a fine-tune's training on a GPU: the cores less one, "
                   "at most 16].")
@ft_options
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def train_cmd(c: Ctx, model: str | None, train_spec: str | None, val_spec: str | None, val_fraction: float,
              target: float, hidden: int, head_epochs: int, views: int | None, finetune: bool, name: str,
              max_steps: int | None, workers: int | None, as_json: bool, **ft: object) -> None:
    """Train a category classifier on the catalogue's (or given) labelled images (--finetune: with the
    CPU or the GPU recipe, by the device the run uses; both below)."""
    train, val = _split(c, train_spec, val_spec, val_fraction)
    loader = workers  # the fine-tune's own loaders: None resolves by device (recipe_for)
    workers = 2 if workers is None else workers  # embedding the photos
    if finetune:
        from shopsearch.classify.finetune_config import recipe_for
        from shopsearch.classify.training import finetune_artefact
        from shopsearch.embedders import load_embedder, resolve_device

        base = load_embedder("efficientnet-lite0", "cpu")
        device = resolve_device(c.settings.device)
        explicit = {k: v for k, v in ft.items() if v is not None}  # the rest: the device's recipe
        cfg = recipe_for(device, **explicit, max_steps=max_steps, workers=loader)
        if not as_json:
            size = (f"as many epochs as fit in {cfg.minutes:g} minutes (at most {cfg.epochs})" if cfg.minutes
                    else f"{cfg.epochs} epochs")
            click.echo(f"fine-tuning on {device}: {size} at {cfg.img_size} px, batches of "
                       f"{cfg.batch_size}, {cfg.frozen_blocks} first blocks frozen, {cfg.workers} loader processes"
                       f"{' (the CPU recipe)' if device.startswith('cpu') else ''}")
        reference = _frozen_reference(c, base, train, val, workers, not as_json)
        art = finetune_artefact(train, val, cfg, device, base_fingerprint=base.fingerprint,
                                name=name, target=target, progress=not as_json, reference_top1=reference)
        path = art.save(c.settings.models_dir / f"{name}.pt")
        art = _serving_choices(c, path, train, val, target, workers, not as_json)
        spec = f"finetuned:{name}"
    else:
        emb = _embedder(c, model)
        from shopsearch.classify.photo_views import TRAIN_VIEWS

        art, path = train_head_for(c, emb, train, val, hidden=hidden, epochs=head_epochs, target=target,
                                   workers=workers, progress=not as_json,
                                   views=TRAIN_VIEWS if views is None else views)
        spec = emb.name
    out = {"artefact": str(path), "kind": art.kind, "model": spec, "fingerprint": art.fingerprint,
           "fine_classes": len(art.labels.fine), "coarse_classes": len(art.labels.coarse),
           "single_level": len(art.labels.fine) == len(art.labels.coarse),
           "thresholds": art.thresholds.to_dict(), "metrics": art.metrics}
    from shopsearch.classify.data import no_validation_warning

    unvalidated = no_validation_warning(art.thresholds.val_samples, val, val_spec, val_fraction)
    warnings = ([unvalidated] if unvalidated else []) + list(art.metrics.get("warnings") or [])
    if warnings:
        out["warnings"] = warnings
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        echo_json(out)
        return
    click.echo(f"saved {art.kind} classifier {path}: {levels_said(len(art.labels.fine), len(art.labels.coarse))}")
    if "val" in art.metrics:
        print_metrics("validation", art.metrics["val"], levels=False)
    for line in routing_lines(art.thresholds, c.settings.fusion):
        click.echo(line)
    if finetune:
        click.echo(f"kept the {art.metrics.get('weights', 'raw')} weights of epoch {art.metrics.get('best_epoch')} "
                   "(raw and averaged weights both validated each epoch)")
        click.echo(f"index with it: shopsearch index build --model {spec}")


def _serving_choices(c: Ctx, path: Path, train, val, target: float, workers: int, progress: bool):
    """The installed fine-tuned model at `path` with its serving settings (nearest-neighbour
    vote, fusion weight, routing thresholds) chosen on `val` over its own vectors; saved in place."""
    from shopsearch.app import load_model
    from shopsearch.classify.artefact import load_artefact
    from shopsearch.classify.training import with_serving_choices
    from shopsearch.classify.vectors import embed_labelled

    emb = load_model(c.settings, f"finetuned:{path}")
    xs, tr = embed_labelled(emb, train, c.settings.vector_cache_dir, progress, workers)
    xv, va = embed_labelled(emb, val, c.settings.vector_cache_dir, progress, workers)
    art = with_serving_choices(load_artefact(path), xs, tr, xv, va, target)
    art.save(path)
    return art


@classify.command("tune")
@click.option("--model", "model", required=True, help="An installed fine-tuned model: finetuned:NAME (or its .pt).")
@click.option("--train", "train_spec", required=True,
              help="Its training images (the vote's labelled photos): grocerystore:ROOT:SPLIT[+SPLIT] | imagefolder:ROOT")
@click.option("--val", "val_spec", required=True, help="Validation images the settings are chosen on (same syntax).")
@click.option("--target", type=float, default=0.97, show_default=True,
              help="Routing precision the thresholds are chosen for on the validation images.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tune_cmd(c: Ctx, model: str, train_spec: str, val_spec: str, target: float, workers: int, as_json: bool) -> None:
    """Choose a fine-tuned model's serving settings on validation photos without training it again
    (what `classify train --finetune` now does at its end): for models trained before it did."""
    from shopsearch.embedders.finetuned import resolve_artefact

    path = resolve_artefact(model.removeprefix("finetuned:"), c.settings.models_dir)
    art = _serving_choices(c, path, _labelled(c, train_spec), _labelled(c, val_spec), target, workers, not as_json)
    out = {"artefact": str(path), "model": model, "knn_vote": art.metrics.get("knn_vote"),
           "thresholds": art.thresholds.to_dict(), "val": art.metrics.get("val"), "val_head": art.metrics.get("val_head")}
    for w in art.metrics.get("warnings") or []:
        click.echo(f"warning: {w}", err=True)
    if as_json:
        echo_json({**out, "warnings": list(art.metrics.get("warnings") or [])})
        return
    print_metrics("validation (served)", art.metrics["val"])
    for line in routing_lines(art.thresholds, c.settings.fusion):
        click.echo(line)


def _probe_baseline(c: Ctx, emb, train_spec: str | None, vecs, items, labels, workers: int, progress: bool) -> dict:
    """The probe fitted on the training images, scored on the evaluated ones."""
    import numpy as np
    import torch

    from shopsearch.classify.head import combined_probs
    from shopsearch.classify.probe import fit_probe, head_from_probes
    from shopsearch.classify.training import accuracy_report
    from shopsearch.classify.vectors import embed_labelled

    known = set(labels.fine)
    train = [i for i in _labelled(c, train_spec) if i.category in known]
    xs, train = embed_labelled(emb, train, c.settings.vector_cache_dir, progress, workers)
    yf = np.array([labels.fine_index(i.category) for i in train], dtype=np.int64)
    yc = np.asarray(labels.fine_to_coarse)[yf]
    fine, coarse = fit_probe(xs, yf, len(labels.fine)), fit_probe(xs, yc, len(labels.coarse))
    with torch.no_grad():
        pf, pc = combined_probs(*head_from_probes(fine, coarse)(torch.from_numpy(np.asarray(vecs, np.float32))),
                                torch.tensor(labels.fine_to_coarse))
    y = np.array([labels.fine_index(i.category) for i in items], dtype=np.int64)
    return {**accuracy_report(pf.numpy(), pc.numpy(), y, labels), "C_fine": fine.c, "C_coarse": coarse.c,
            "train_samples": len(train)}


def _frozen_reference(c: Ctx, base, train, val, workers: int, progress: bool) -> float | None:
    """The frozen head's validation top-1 on the same images (cached vectors), the bar a
    fine-tune must clear."""
    from shopsearch.classify.training import train_frozen
    from shopsearch.classify.vectors import embed_labelled

    if not val:
        return None
    xs, tr = embed_labelled(base, train, c.settings.vector_cache_dir, progress, workers)
    xv, va = embed_labelled(base, val, c.settings.vector_cache_dir, progress, workers)
    if not tr or not va:
        return None
    art = train_frozen(xs, tr, xv, va, base.fingerprint, base.name)
    return art.metrics.get("val", {}).get("fine", {}).get("top1")


@classify.command("eval")
@click.option("--model", default=None, help="Embedder (default: the serving index's model).")
@click.option("--data", "data_spec", required=True,
              help="Labelled images: grocerystore:ROOT:SPLIT[+SPLIT] | imagefolder:ROOT")
@click.option("--baseline", is_flag=True,
              help="Also fit a cross-validated logistic-regression probe on the training images' vectors and "
                   "report it beside the installed head (the bar the head must clear).")
@click.option("--train", "train_spec", default=None,
              help="--baseline: the probe's training images (default: the catalogue's labelled images).")
@click.option("--tta", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="Classify the unit mean of each photo's and its mirror image's vectors, as searches do with "
                   "SHOPSEARCH_TTA=on (the fused category head then reads that vector).")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def eval_cmd(c: Ctx, model: str | None, data_spec: str, baseline: bool, train_spec: str | None, tta: str,
             workers: int, as_json: bool) -> None:
    """Top-1/top-5 per category level and the most confused pairs on labelled images."""
    import numpy as np

    from shopsearch.classify.artefact import load_artefact
    from shopsearch.classify.router import Classifier, find_artefact
    from shopsearch.classify.training import accuracy_report
    from shopsearch.classify.vectors import embed_labelled
    from shopsearch.errors import ClassifierError

    emb = _embedder(c, model)
    path = find_artefact(c.settings, emb)
    if path is None:
        raise ClassifierError(f"no classifier trained for model {emb.name!r}: run `shopsearch classify train`")
    clf = Classifier.for_embedder(load_artefact(path), emb)
    items = _labelled(c, data_spec)
    known = set(clf.labels.fine)
    unknown = sum(1 for i in items if i.category not in known)
    vecs, items = embed_labelled(emb, [i for i in items if i.category in known], c.settings.vector_cache_dir,
                                 not as_json, workers)
    if tta == "on" and len(items):
        vecs, items = _with_mirrors(emb, c.settings.vector_cache_dir, vecs, items, not as_json)
    pf, pc = clf.probs(vecs) if len(items) else (np.zeros((0, len(known))), np.zeros((0, len(clf.labels.coarse))))
    report = accuracy_report(pf, pc, np.array([clf.labels.fine_index(i.category) for i in items], dtype=np.int64),
                             clf.labels)
    report.update({"model": emb.name, "artefact": str(path), "unknown_category_images": unknown, "tta": tta == "on"})
    if baseline:
        report["baseline"] = _probe_baseline(c, emb, train_spec, vecs, items, clf.labels, workers, not as_json)
    if as_json:
        echo_json(report)
        return
    print_metrics(f"{data_spec} with {emb.name}", report)
    if baseline:
        print_metrics("cross-validated logistic-regression probe (baseline)", report["baseline"])
    if unknown:
        click.echo(f"({unknown} images of categories the classifier does not know were skipped)", err=True)


def _with_mirrors(emb, cache_root, vecs, items, progress: bool):
    """(TTA vectors, their items): each vector averaged with its mirrored photo's (cached)."""
    from shopsearch.evaluation import tta as tta_mod
    from shopsearch.images import sha256_file

    keys = [i.sha256 or sha256_file(i.path) for i in items]
    mirrored = tta_mod.flipped_cache(emb, cache_root, list(zip([i.path for i in items], keys)), progress=progress)
    keep = [j for j, k in enumerate(keys) if k in mirrored]
    return tta_mod.combine(vecs[keep], mirrored.get_many([keys[j] for j in keep])), [items[j] for j in keep]


@classify.command("tag")
@click.option("--model", default=None, help="Embedder (default: the serving index's model).")
@click.option("--retag", is_flag=True, help="Also re-predict products that already have a predicted category.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tag_cmd(c: Ctx, model: str | None, retag: bool, as_json: bool) -> None:
    """Predict categories for products without a merchant category (never overwrites one)."""
    from shopsearch.classify.artefact import load_artefact
    from shopsearch.classify.router import Classifier, find_artefact
    from shopsearch.classify.tagging import tag_products
    from shopsearch.errors import ClassifierError

    emb = _embedder(c, model)
    path = find_artefact(c.settings, emb)
    if path is None:
        raise ClassifierError(f"no classifier trained for model {emb.name!r}: run `shopsearch classify train`")
    report = tag_products(c.catalogue(), emb, Classifier.for_embedder(load_artefact(path), emb),
                          c.settings.vector_cache_dir, retag=retag, progress=not as_json)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(f"tagged {report.tagged} product(s); {report.merchant} have a merchant category, "
               f"{report.already_predicted} already predicted, {report.no_images} without usable images")


@classify.command("install")
@click.argument("artefact", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Installed as <data dir>/models/NAME.pt -> model spec finetuned:NAME")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def install_cmd(c: Ctx, artefact: str, name: str, as_json: bool) -> None:
    """Install a fine-tuned artefact trained elsewhere (e.g. `python -m indexer.finetune_main` on a GPU)."""
    from shopsearch.classify.artefact import load_artefact
    from shopsearch.errors import ClassifierError

    art = load_artefact(Path(artefact))
    if art.backbone is None:
        raise ClassifierError(f"{artefact} is a head-only classifier; `install` takes fine-tuned models")
    dest = c.settings.models_dir / f"{name}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(artefact, tmp)
    tmp.replace(dest)
    from shopsearch.embedders.finetuned import load_finetuned

    emb = load_finetuned(str(dest))  # verifies the weights against the fingerprint
    out = {"installed": str(dest), "model": f"finetuned:{name}", "fingerprint": emb.fingerprint}
    if as_json:
        echo_json(out)
    else:
        click.echo(f"installed {dest}; index with: shopsearch index build --model finetuned:{name}")


def register(cli: click.Group) -> None:
    cli.add_command(classify)
