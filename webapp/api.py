"""/api/v1: JSON search, products, recommendations, health and the OpenAPI document."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from shopsearch.regions import find_objects
from webapp.errors import BadParameterError
from webapp.feedback import log_search, record
from webapp.metrics import observe_search
from webapp.openapi import openapi_document
from webapp.params import (parse_filters, parse_k, parse_rerank, parse_routing, parse_switch, product_dict,
                           result_dict)
from webapp.query_options import parse_crop, parse_objects, region_dict, resolved
from webapp.service import ServiceHolder, photo_search
from webapp.uploads import crop_upload, require_image

bp = Blueprint("api", __name__)


def holder() -> ServiceHolder:
    return current_app.extensions["shopsearch"]


def _params():
    # multipart fields and the query string both work (curl -F k=5 or ?k=5)
    return request.values if request.mimetype == "multipart/form-data" else request.args


@bp.post("/search")
@photo_search
def search():
    """Image search: multipart field `image`, or the raw image as the request body; `crop=x,y,w,h`
    searches that part of the upright photo, `objects=auto` also finds the products in it."""
    values = _params()
    k, filters, routing = parse_k(values, 10), _filters(values), parse_routing(values)
    rerank, tta, fusion = parse_rerank(values), parse_switch(values, "tta"), parse_switch(values, "fusion")
    box, objects = parse_crop(values), parse_objects(values)
    svc = holder().get()
    data, img = require_image(svc.embedder, "image", allow_raw=True)
    query = crop_upload(data, img, box, svc.embedder) if box is not None else img
    res = svc.search_image(query, k=k, filters=filters, routing=routing, rerank=rerank, tta=tta, fusion=fusion)
    observe_search(res)
    out = result_dict(res, filters, k)
    out["crop"] = box.to_dict() if box is not None else None
    regions = find_objects(svc, img, objects, k, filters) if objects else []
    if objects:  # boxes in fractions of the whole photo, like `crop`
        out["regions"] = [region_dict(r) for r in regions]
    out["request_id"] = log_search(res, svc.embedder.fingerprint, "image", "api", {
        "k": k, "filters": out["filters"], "crop": out["crop"], "objects": objects, "routing": routing,
        "rerank": values.get("rerank"), "tta": tta, "fusion": fusion}, [r.result for r in regions])
    return jsonify(out)


def _filters(values):
    filters = parse_filters(values)
    if not filters.category:  # most searches name no category: no database read for the list
        return filters
    return resolved(filters, [c.path for c in holder().catalogue.categories()])


@bp.get("/categories")
def categories():
    """Every category path, for the `category` filter (which also takes `A > B` and leaf names)."""
    cats = sorted(holder().catalogue.categories(), key=lambda c: c.path)
    return jsonify({"categories": [{"path": c.path, "name": c.name, "depth": c.depth,
                                    "display": c.path.replace("/", " > ")} for c in cats],
                    "count": len(cats)})


@bp.get("/search/text")
def search_text():
    q = (request.args.get("q") or "").strip()
    k, filters = parse_k(request.args, 10), _filters(request.args)
    svc = holder().get()
    if not q:
        raise BadParameterError("q (the text to search for) is required")
    if len(q) > 500:
        raise BadParameterError("q is too long (500 characters at most)")
    res = svc.search_text(q, k=k, filters=filters)  # CapabilityError (409) without a text tower
    observe_search(res)
    out = result_dict(res, filters, k)
    out["query"] = q
    # the words themselves are not logged: their vector is what an analysis replays
    out["request_id"] = log_search(res, svc.embedder.fingerprint, "text", "api",
                                   {"k": k, "filters": out["filters"]})
    return jsonify(out)


@bp.get("/products/<path:sku>")
def product(sku: str):
    return jsonify(product_dict(holder().catalogue.get_product(sku)))


@bp.get("/products/<path:sku>/similar")
def similar(sku: str):
    k = parse_k(request.args, int(current_app.config["SIMILAR_K"]))
    res = holder().get().similar_products(sku, k=k)
    out = result_dict(res, None, k)
    out["sku"] = sku
    return jsonify(out)


@bp.post("/feedback")
def feedback():
    """A shopper's interaction with a logged search: JSON {request_id, sku, event}."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # thousands of nested brackets: `silent` covers only ValueError
        body = None
    if not isinstance(body, dict):
        raise BadParameterError('send a JSON object: {"request_id": ..., "sku": ..., "event": ...}')
    missing = [f for f in ("request_id", "sku", "event") if not isinstance(body.get(f), str)]
    if missing:
        raise BadParameterError(f"{', '.join(missing)} missing or not a string")
    done = record(body["request_id"], body["sku"], body["event"])
    resp = jsonify({"recorded": {"request_id": body["request_id"], "sku": done.sku, "event": done.event,
                                 "at": done.created_at.isoformat()}})
    resp.status_code = 201
    return resp


@bp.get("/openapi.json")
def openapi():
    # a relative server URL: echoing the Host header would let anyone poison cached copies
    return jsonify(openapi_document(request.script_root + "/api/v1"))


def _api_root():
    """/api without its slash: the JSON 404 that /api/<anything unknown> gets, not the pages' HTML one."""
    if request.path != "/api":
        return None
    resp = jsonify({"error": {"code": "not_found", "message": f"no route {request.path}"}})
    resp.status_code = 404
    return resp


@bp.record_once
def _register_api_root(state: BlueprintSetupState) -> None:
    # /api is outside the blueprint's /api/v1 prefix. Answered before the app's other checks, as
    # for any method an unknown path under /api/ is a JSON 404: the pages' cross-site form check
    # would otherwise answer a storefront's POST to it with an HTML 403
    state.app.before_request(_api_root)
