"""Server-rendered pages: upload, results, product + "more like this"."""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, make_response, redirect, render_template, request, url_for

from shopsearch.errors import ShopSearchError, UnknownRequestError
from shopsearch.images import grey_thumbnail, lacks_detail
from shopsearch.photo_advice import known_advice, photo_advice
from shopsearch.regions import Region, find_objects, parse_box
from shopsearch.results import ProductHit, SearchFilters, SearchResult, parse_price
from shopsearch.search import query_vectors
from webapp.errors import BadParameterError, MissingImageError, public_message
from webapp.feedback import log_search, logged_request, logging_on
from webapp.params import parse_filters, parse_k, parse_routing, visible_attributes
from webapp.query_options import format_price, parse_crop, parse_objects, resolved
from webapp.service import ServiceHolder, photo_search
from webapp.metrics import observe_search
from webapp.uploads import (checked_preview, crop_upload, decode_upload, decode_vector, encode_vector, preview_data_url,
                            upload_bytes)
from webapp.signing import EXPIRED, ExpiredQueryError, Signer

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


def _has_prices() -> bool:
    try:
        return holder().catalogue.has_prices()
    except ShopSearchError:
        return True  # unknown: keep the filter rather than hide it wrongly


def index_context() -> dict[str, Any]:
    """What the upload form needs (also used to re-show it with an error message)."""
    svc = holder().peek()
    return {"categories": _categories(), "has_text": bool(svc and svc.embedder.has_text),
            "vectors": len(svc.index) if svc else 0, "index_ready": svc is not None,
            "max_bytes": int(current_app.config["MAX_CONTENT_LENGTH"]), "filters": SearchFilters(),
            "model": svc.manifest.model_name if svc else None, "has_prices": _has_prices()}


def category_label(path: str | None) -> str | None:
    """Short tag text: the product's own (leaf) category ("Fruit/Apple/Granny-Smith" -> "Granny Smith");
    the product page shows the whole path."""
    if not path:
        return None
    return path.split("/")[-1].replace("-", " ")


@bp.app_template_filter("pct")
def shown_pct(p: float | None) -> int | None:
    """A probability as a whole percentage for shoppers, never 0% nor 100% (an estimate is never certain)."""
    return None if p is None else min(99, max(1, round(p * 100)))


def shown_similarity(score: float) -> str:
    """A raw similarity (no calibration) as `0.87`: not a percentage, since it is not a probability, and
    never `1.00`, since even the same photo re-encoded is not a certain match."""
    return f"{min(max(score, 0.0), 0.99):.2f}"


#: (likely from, possible from) for a card's calibrated chance when the search's calibration names
#: no thresholds of its own (a logged search's page)
DEFAULT_BANDS = (0.6, 0.25)


def bands_of(res: SearchResult) -> tuple[float, float]:
    """A card's bands as the search's verdict draws them: "Likely match" from the calibration's
    `strong_at`, "Possible match" from its `none_below`, so no card under "no close match" says
    "possible" and the first card of a strong match says "likely"."""
    cal = res.calibration or {}
    if "strong_at" in cal and "none_below" in cal:
        return float(cal["strong_at"]), float(cal["none_below"])
    return DEFAULT_BANDS


def likelihood(p: float | None, bands: tuple[float, float] = DEFAULT_BANDS) -> str | None:
    if p is None:
        return None
    return "likely" if p >= bands[0] else "possible" if p >= bands[1] else "unlikely"


def card(h: ProductHit, request_id: str | None = None, bands: tuple[float, float] = DEFAULT_BANDS,
         scored: bool = True) -> dict[str, Any]:
    """A result card; with the search's `request_id` its link records a click and it offers
    "this is it" / "not this" (the feedback log). `bands`: bands_of the search; `scored`=False
    shows no figure (recommendations: their similarity is not a chance, and reads as one)."""
    primary = holder().primary_image_id(h.sku)
    p = h.calibrated
    return {"request_id": request_id, "verdict": None,
            "sku": h.sku, "title": h.title, "brand": h.brand, "price": format_price(h.price, h.currency),
            "category": h.category, "category_label": category_label(h.category),
            "category_source": h.category_source, "score": h.score, "similarity": shown_similarity(h.score),
            "calibrated_pct": shown_pct(p), "likelihood": likelihood(p, bands), "scored": scored,
            "matched_image_id": h.image_id, "image_id": primary or h.image_id,
            "matched_differs": primary is not None and primary != h.image_id, "matched_images": h.matched_images}


def signer() -> Signer:
    return current_app.extensions["shopsearch_signer"]


def _carried(r: Region) -> str:
    """A region as a form value the filter and "Show more" forms post back: `x,y,w,h|flat|vector`
    (the vector encoded as the page's `qv` is; the photo itself is not kept), signed (webapp/signing.py)."""
    return signer().seal("region", f"{r.box.to_param()}|{int(r.flat)}|{encode_vector(r.vector)}")


def _sealed_query(vec: Any, origin: str | None) -> str:
    """The page's `qv`: the query vector and the request id of the photo search it came from, signed."""
    return signer().seal("qv", f"{encode_vector(vec)}~{origin or ''}")


def _opened_query(token: str) -> tuple[str, str | None]:
    """(encoded vector, the photo search's request id or None) of a posted `qv`; 400 unless this server signed it."""
    parts = signer().open("qv", token).split("~")
    if len(parts) != 2:
        raise ExpiredQueryError(EXPIRED)
    return parts[0], parts[1] or None


def region_view(r: Region, index: int, request_id: str | None = None) -> dict[str, Any]:
    """A found object for the results page: its outline (percent of the photo), its cards, and
    what the filter and "Show more" forms post back to search it again."""
    b = r.box
    hits = r.result.hits
    return {"id": f"region-{index}", "index": index, "title": hits[0].title if hits else None, "match": r.match,
            "confidence_pct": shown_pct(r.confidence),
            "box": b.to_param(), "z": 1 + int(99 * (1 - b.w * b.h)),  # smaller boxes on top, still clickable
            "crop": b.to_param(), "cards": [card(h, request_id, bands_of(r.result)) for h in hits],
            "carried": _carried(r) if r.vector is not None else ""}


def reading_order(regions: list[Region]) -> list[Region]:
    """Regions as a shopper reads the photo: rows top to bottom, each row left to right (so the
    numbers on the outlines, the chips and the keyboard's tab order all agree with the photo).
    A region starts a new row when its middle lies below the bottom of the row's first region."""
    rows: list[list[Region]] = []
    for r in sorted(regions, key=lambda r: (r.box.y + r.box.h / 2, r.box.x)):
        if rows and r.box.y + r.box.h / 2 <= rows[-1][0].box.y + rows[-1][0].box.h:
            rows[-1].append(r)
        else:
            rows.append([r])
    return [r for row in rows for r in sorted(row, key=lambda r: (r.box.x + r.box.w / 2, r.box.y))]


def _posted_regions(form: Any, svc: Any, k: int, filters: SearchFilters) -> list[Region]:
    """The regions a results page posted back, each searched again with the new filters and k
    (kept in their order, numbers and outlines, even where nothing close is left in the filters)."""
    out: list[Region] = []
    for raw in form.getlist("region")[: int(current_app.config["MAX_OBJECTS"])]:
        parts = signer().open("region", str(raw)).split("|")
        if len(parts) != 3:
            raise BadParameterError("the search query is malformed; upload the photo again")
        box, flat, vec = parse_box(parts[0]), parts[1] == "1", decode_vector(parts[2], svc.embedder.dim)
        res = svc.search_vector(vec, k=k, filters=filters, flat=flat)
        score = res.hits[0].score if res.hits else 0.0
        out.append(Region(box, res.confidence, res.match, score, res, "posted", vec, flat))
    return out


def results_title(res: SearchResult, cards: list[dict[str, Any]], mode: str | None, q: str | None = None,
                  regions: list[dict[str, Any]] | None = None) -> str:
    """The results page's title: the verdict and the first product, so that a shopper who hears
    or sees only the title (a screen reader, a browser tab, the history) knows the outcome."""
    first = cards[0]["title"] if cards else None
    if mode == "logged":
        return f"Your search results: {first}" if first else "Your search results"
    if regions:
        names = ", ".join(r["title"] for r in regions if r["title"])
        n = len(regions)
        return f"{n} product{'' if n == 1 else 's'} found in your photo" + (f": {names}" if names else "")
    if not cards:
        return "No products found"
    if mode == "text":
        return f"Results for “{q}”: {first}"
    if res.match == "none":
        return "No close match with these filters" if res.confidence_limit == "filter" else "No close match"
    if res.match == "weak":
        return f"Possible match: {first}"
    if res.match == "strong":
        return f"Close match: {first}"
    return f"Most similar: {first}"


def _render_results(res: SearchResult, filters: SearchFilters, k: int, request_id: str | None = None,
                    cards: list[dict[str, Any]] | None = None, **ctx: Any):
    svc = holder().get()
    cards = [card(h, request_id, bands_of(res)) for h in res.hits] if cards is None else cards
    title = results_title(res, cards, ctx.get("mode"), ctx.get("q"), ctx.get("regions"))
    return render_template("results.html", cards=cards, result=res, filters=filters, k=k, page_title=title,
                           categories=_categories(), has_text=svc.embedder.has_text,
                           predicted=res.predicted_category, has_prices=_has_prices(),
                           confidence_pct=shown_pct(res.confidence), request_id=request_id, **ctx)


def _price_problem(form: Any) -> str | None:
    """The price filter's problem in a shopper's words (the page keeps the photo and results)."""
    values = {}
    for name, label in (("min_price", "Min price"), ("max_price", "Max price")):
        raw = (form.get(name) or "").strip()
        if not raw:
            continue
        try:
            values[name] = parse_price(raw)
        except ValueError:
            return f"{label} must be a number, like 12.50."
        if not SearchFilters.price_allowed(values[name]):
            if values[name].is_finite() and values[name] > 0:
                return f"{label} must be at most {SearchFilters.MAX_PRICE:,}."
            return f"{label} must be 0 or more."
    lo, hi = values.get("min_price"), values.get("max_price")
    if lo is not None and hi is not None and lo > hi:
        return (f"Min price ({lo:.2f}) is higher than Max price ({hi:.2f}). "
                "Lower the minimum or raise the maximum.")
    return None


def _page_filters(form: Any) -> tuple[SearchFilters, str | None]:
    """Filters for a results page; a bad price range is reported inline, searched without prices."""
    if form.get("clear"):  # the "Clear filters" button
        return SearchFilters(), None
    problem = _price_problem(form)
    if problem:
        form = {k: v for k, v in form.items() if k not in ("min_price", "max_price")}
    return resolved(parse_filters(form), [c["path"] for c in _categories()]), problem


@bp.get("/")
def index():
    return render_template("index.html", **index_context())


@bp.get("/search")
def search_get():
    return redirect(url_for("pages.index"))


@bp.post("/search")
@photo_search
def search():
    """A new photo (multipart `image`), or the previous query re-run with new filters (`qv`)."""
    form = request.form
    k = parse_k(form, int(current_app.config["RESULTS_K"]))
    filters, filter_error = _page_filters(form)
    box, objects, routing = parse_crop(form), parse_objects(form), parse_routing(form)
    svc = holder().get()
    data = upload_bytes("image", allow_raw=False)
    if data is None:  # the phone-camera input of the upload form
        data = upload_bytes("camera", allow_raw=False)
    embed_ms = 0.0
    regions: list[Region] = []
    origin: str | None = None  # a re-run's photo search (its request id)
    if data is not None:
        img = decode_upload(data, svc.embedder)
        query = crop_upload(data, img, box, svc.embedder) if box is not None else img
        grey = grey_thumbnail(query)  # read by both checks on the photo's content
        flat, advice = lacks_detail(grey), photo_advice(grey)
        t0 = time.perf_counter()
        vec = query_vectors(svc.embedder, [query])[0]
        embed_ms = (time.perf_counter() - t0) * 1000
        preview = preview_data_url(img, 480 if objects else 240)  # objects are outlined on it: larger
        if objects:
            regions = reading_order(find_objects(svc, img, objects, min(k, 8), filters))
    elif form.get("qv"):  # only a vector this server signed: a made-up one would be logged as a photo's
        encoded, origin = _opened_query(form["qv"])
        vec = decode_vector(encoded, svc.embedder.dim)
        flat = form.get("qflat") == "1"  # carried with the vector (it only ever lowers the confidence)
        advice = known_advice(form.getlist("qadvice"))  # likewise (it only ever adds a hint)
        # the objects found in the photo, searched again from their posted-back vectors
        regions = _posted_regions(form, svc, min(k, 8), filters)
        preview = checked_preview(form.get("qthumb"), 480 if regions else 240)
    else:
        raise MissingImageError("Choose or take a photo first.")
    res = svc.search_vector(vec, k=k, filters=filters, routing=routing, embed_ms=embed_ms, flat=flat,
                            advice=advice)
    observe_search(res)
    crop_param = box.to_param() if box is not None else (form.get("crop") or "")
    options = {"k": k, "filters": _filters_dict(filters), "crop": crop_param or None, "objects": objects,
               "routing": routing, "new_photo": data is not None}
    # a re-run (filters, "Show more") is logged, so its cards take feedback, as kind "refine" linked to
    # the photo search it re-runs: no second shopper photo for adapter training or centring
    if data is None:
        options["refines"] = origin
    rid = log_search(res, svc.embedder.fingerprint, "image" if data is not None else "refine", "page", options,
                     [r.result for r in regions])
    qv = _sealed_query(vec, rid if data is not None else origin)
    page = make_response(_render_results(
        res, filters, k, rid, mode="photo", qv=qv, qflat=flat, preview=preview, filter_error=filter_error,
        price_input={n: form.get(n, "") for n in ("min_price", "max_price")}, crop=crop_param,
        objects=objects, regions=[region_view(r, i + 1, rid) for i, r in enumerate(regions)]))
    # the page inlines the shopper's photo (and its query vector): no shared cache (a proxy) may keep
    # it; the shopper's own browser may, so that Back from a product returns to these results
    # (with no-store, Chrome can only offer to send the photo again: ERR_CACHE_MISS)
    page.headers["Cache-Control"] = "private"
    return page


def _filters_dict(f: SearchFilters) -> dict[str, Any]:
    return {"category": f.category, "min_price": None if f.min_price is None else float(f.min_price),
            "max_price": None if f.max_price is None else float(f.max_price)}


@bp.get("/search/text")
def search_text():
    q = (request.args.get("q") or "").strip()
    k = parse_k(request.args, int(current_app.config["RESULTS_K"]))
    filters, filter_error = _page_filters(request.args)
    if not q:
        return redirect(url_for("pages.index"))
    if len(q) > 500:
        raise BadParameterError("The search text is too long (500 characters at most).")
    svc = holder().get()
    res = svc.search_text(q, k=k, filters=filters)
    observe_search(res)
    rid = log_search(res, svc.embedder.fingerprint, "text", "page", {"k": k, "filters": _filters_dict(filters)})
    return _render_results(res, filters, k, rid, mode="text", q=q, filter_error=filter_error,
                           price_input={n: request.args.get(n, "") for n in ("min_price", "max_price")})


@bp.get("/results/<rid>")
def logged_results(rid: str):
    """A logged search's results as they were shown (same products, ranks and scores), with
    the shopper's verdicts: where "this is it" / "not this" lead back to without JavaScript."""
    if not logging_on():
        raise UnknownRequestError("Results are not kept on this shop. Please search again.")
    h = holder()
    h.flush_feedback(2.0)
    try:
        logged = h.feedback.search(rid)
    except UnknownRequestError:  # an old bookmark or a mistyped link: say so in a shopper's words
        raise UnknownRequestError("These results are no longer available. Please search again.") from None
    main = [x for x in logged.hits if x.region == 0]
    info = h.catalogue.products_for_images([x.image_id for x in main])
    verdicts = logged.verdicts()
    cards = []
    for x in main:
        if x.image_id in info:  # a product deleted since shows no card
            prod, img = info[x.image_id]
            c = card(ProductHit(prod.sku, prod.title, x.score, img.id, img.path, prod.brand, prod.price,
                                prod.currency, prod.category, prod.category_source, 1, x.calibrated), rid)
            c["verdict"] = verdicts.get(x.sku)
            cards.append(c)
    res = SearchResult((), logged.model_name, logged.build_id, {}, None, logged.confidence, logged.match,
                       advice=logged.advice, confidence_limit=logged.confidence_limit)
    return _render_results(res, SearchFilters(), len(cards), rid, cards=cards, mode="logged",
                           price_input={})


@bp.get("/products/<path:sku>")
def product(sku: str):
    h = holder()
    p = h.catalogue.get_product(sku)
    images = [i for i in p.images if i.status == "ok"]
    images.sort(key=lambda i: i.role != "catalogue")  # catalogue photos first, shopper references after
    similar: list[dict[str, Any]] = []
    similar_error = None
    back_rid = logged_request(request.args.get("results"))  # a logged search's: "more like this" keeps it
    try:
        similar = [card(x, scored=False) | {"back_rid": back_rid}
                   for x in h.get().similar_products(sku, k=int(current_app.config["SIMILAR_K"])).hits]
    except ShopSearchError as e:
        similar_error = public_message(e)  # no server path (a damaged build names its files)
    return render_template("product.html", product=p, images=images, first_images=12,
                           price=format_price(p.price, p.currency), similar=similar, similar_error=similar_error,
                           attributes=visible_attributes(p.attributes), back_rid=back_rid)
