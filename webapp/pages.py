"""Server-rendered pages: upload, results, product + "more like this"."""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from shopsearch.errors import ShopSearchError
from shopsearch.results import ProductHit, SearchFilters, SearchResult
from webapp.errors import BadParameterError, MissingImageError
from webapp.params import parse_filters, parse_k, parse_routing
from webapp.service import ServiceHolder
from webapp.metrics import observe_search
from webapp.uploads import checked_preview, decode_upload, decode_vector, encode_vector, preview_data_url, upload_bytes

log = logging.getLogger("shopsearch.web")
bp = Blueprint("pages", __name__)


def holder() -> ServiceHolder:
    return current_app.extensions["shopsearch"]


def _categories() -> list[dict[str, Any]]:
    try:
        cats = holder().catalogue.categories()
    except ShopSearchError as e:
        log.warning("cannot list categories", extra={"error": str(e), "code": e.code})
        return []
    except Exception:  # noqa: BLE001 - the upload page must render even when the DB is unwell
        log.exception("cannot list categories")
        return []
    return [{"path": c.path, "name": c.name, "depth": c.depth} for c in sorted(cats, key=lambda c: c.path)]


def index_context() -> dict[str, Any]:
    """What the upload form needs (also used to re-show it with an error message)."""
    svc = holder().peek()
    return {"categories": _categories(), "has_text": bool(svc and svc.embedder.has_text),
            "vectors": len(svc.index) if svc else 0, "index_ready": svc is not None,
            "max_bytes": int(current_app.config["MAX_CONTENT_LENGTH"]), "filters": SearchFilters(),
            "model": svc.manifest.model_name if svc else None}


def _price(price: Any, currency: str | None) -> str | None:
    if price is None:
        return None
    return f"{float(price):,.2f} {currency or ''}".strip()


def category_label(path: str | None) -> str | None:
    """Short tag text: the leaf's parent ("Fruit/Apple/Granny-Smith" -> "Apple"), the title names the leaf."""
    if not path:
        return None
    parts = path.split("/")
    return (parts[-2] if len(parts) > 1 else parts[-1]).replace("-", " ")


def card(h: ProductHit) -> dict[str, Any]:
    primary = holder().primary_image_id(h.sku)
    return {"sku": h.sku, "title": h.title, "brand": h.brand, "price": _price(h.price, h.currency),
            "category": h.category, "category_label": category_label(h.category),
            "category_source": h.category_source, "score": h.score, "score_pct": max(0, round(h.score * 100)),
            "matched_image_id": h.image_id, "image_id": primary or h.image_id,
            "matched_differs": primary is not None and primary != h.image_id, "matched_images": h.matched_images}


def _render_results(res: SearchResult, filters: SearchFilters, k: int, **ctx: Any):
    svc = holder().get()
    return render_template("results.html", cards=[card(h) for h in res.hits], result=res, filters=filters, k=k,
                           categories=_categories(), has_text=svc.embedder.has_text,
                           predicted=res.predicted_category, **ctx)


@bp.get("/")
def index():
    return render_template("index.html", **index_context())


@bp.get("/search")
def search_get():
    return redirect(url_for("pages.index"))


@bp.post("/search")
def search():
    """A new photo (multipart `image`), or the previous query re-run with new filters (`qv`)."""
    form = request.form
    k = parse_k(form, int(current_app.config["RESULTS_K"]))
    filters = parse_filters(form)
    svc = holder().get()
    data = upload_bytes("image", allow_raw=False)
    if data is None:  # the phone-camera input of the upload form
        data = upload_bytes("camera", allow_raw=False)
    embed_ms = 0.0
    if data is not None:
        img = decode_upload(data, svc.embedder)
        t0 = time.perf_counter()
        vec = svc.embedder.encode_images([img])[0]
        embed_ms = (time.perf_counter() - t0) * 1000
        preview = preview_data_url(img)
    elif form.get("qv"):
        vec = decode_vector(form["qv"], svc.embedder.dim)
        preview = checked_preview(form.get("qthumb"))
    else:
        raise MissingImageError("Choose or take a photo first.")
    res = svc.search_vector(vec, k=k, filters=filters, routing=parse_routing(form), embed_ms=embed_ms)
    observe_search(res)
    return _render_results(res, filters, k, mode="photo", qv=encode_vector(vec), preview=preview)


@bp.get("/search/text")
def search_text():
    q = (request.args.get("q") or "").strip()
    k = parse_k(request.args, int(current_app.config["RESULTS_K"]))
    filters = parse_filters(request.args)
    if not q:
        return redirect(url_for("pages.index"))
    if len(q) > 500:
        raise BadParameterError("The search text is too long (500 characters at most).")
    res = holder().get().search_text(q, k=k, filters=filters)
    observe_search(res)
    return _render_results(res, filters, k, mode="text", q=q)


@bp.get("/products/<path:sku>")
def product(sku: str):
    h = holder()
    p = h.catalogue.get_product(sku)
    images = [i for i in p.images if i.status == "ok"]
    images.sort(key=lambda i: i.role != "catalogue")  # catalogue photos first, shopper references after
    similar: list[dict[str, Any]] = []
    similar_error = None
    try:
        similar = [card(x) for x in h.get().similar_products(sku, k=int(current_app.config["SIMILAR_K"])).hits]
    except ShopSearchError as e:
        similar_error = str(e)
    return render_template("product.html", product=p, images=images[:13], more_images=max(0, len(images) - 13),
                           price=_price(p.price, p.currency), similar=similar, similar_error=similar_error,
                           attributes=sorted((str(k), v) for k, v in (p.attributes or {}).items()))
