"""The OpenAPI 3 document of /api/v1 (hand-written: the API is small and stable)."""
from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}


def _q(name: str, schema: dict, desc: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": desc}


_K = _q("k", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "How many products to return.")
_FILTERS = [
    _q("category", {"type": "string"}, "Only products under this category: a path (`Fruit/Apple` or "
       "`Fruit > Apple`, any case) or a leaf name (`Apple`) that only one category ends with. An unknown one is "
       "a 400 (`unknown_category`); `GET /categories` lists them."),
    _q("min_price", {"type": "number", "minimum": 0}, "Lowest price (inclusive)."),
    _q("max_price", {"type": "number", "minimum": 0}, "Highest price (inclusive)."),
]
_REGION_PARAMS = [
    _q("crop", {"type": "string", "example": "0.1,0.2,0.5,0.5"},
       "Search only this box of the photo: x,y,w,h as fractions of the upright (EXIF-rotated) image, cut from the "
       "photo at its own resolution. A malformed box, one leaving the photo or under 16 pixels a side of the "
       "photo is a 400 (`invalid_crop`)."),
    _q("objects", {"type": "string", "example": "auto"},
       "`auto` (or a number up to 4): also find the products in the whole photo; each region has its box "
       "(fractions of the whole photo, usable as `crop`), confidence and products (`regions`). At most the 4 "
       "largest foreground blobs and 23 grid windows of the photo are searched."),
]
_MATCH = {"type": "string", "nullable": True, "enum": ["strong", "weak", "none", None],
          "description": "How close the shop's best product is: `strong` from `calibration.strong_at`, `none` "
                         "(no close match: the results are only the nearest items) below `calibration.none_below`, "
                         "`weak` between; null when uncalibrated."}
_SKU = {"name": "sku", "in": "path", "required": True, "schema": {"type": "string"}, "description": "Product SKU."}


def _ok(schema: str, desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def openapi_document(server_url: str = "/api/v1") -> dict[str, Any]:
    """The document; `server_url` is relative on purpose (never built from the Host header)."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "ShopSearch API", "version": "1.0.0",
                 "description": "Visual product search: a shopper photo in, the catalogue products that look most "
                                "alike out. Errors are `{\"error\": {\"code\", \"message\"}}`."},
        "servers": [{"url": server_url}],
        "paths": {
            "/search": {"post": {
                "summary": "Search the catalogue with a photo",
                "description": "Send the photo as multipart field `image`, or as the raw request body. The bytes "
                               "are sniffed (not the filename or Content-Type). Uploads over the size limit get 413, "
                               "non-images 415, corrupt or oversized images 400.",
                "parameters": [_K, *_FILTERS, _q("routing", {"type": "boolean", "default": True},
                                                 "Let the category router narrow the search (on/off, true/false, "
                                                 "1/0, yes/no; anything else is a 400)."),
                               _q("rerank", {"type": "string", "enum": ["off", "qe", "kr", "qe+kr"]},
                                  "Re-rank the top candidates: alpha query expansion (qe), k-reciprocal (kr), "
                                  "both, or off (default: the server's setting). `qe+kr` may be sent unescaped "
                                  "(a `+` decoded as a space is read as `+`). Settings may follow, each bounded "
                                  "(`qe=0..50`, `kr=1..50`, `k2=1..20`, `depth=2..500`, `alpha=0..20`, "
                                  "`lam=0..1`), e.g. `kr=20,depth=100`; one outside its range is a 400."),
                               _q("tta", {"type": "boolean"}, "Also embed the mirrored photo (about twice the "
                                  "embedding time)."),
                               _q("fusion", {"type": "boolean"}, "Fuse the category head's probabilities into the "
                                  "ranking instead of filtering by the predicted category."), *_REGION_PARAMS],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary"}, "k": {"type": "integer"},
                        "category": {"type": "string"}, "min_price": {"type": "number"},
                        "max_price": {"type": "number"}, "crop": {"type": "string"}, "objects": {"type": "string"}}}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"200": _ok("SearchResponse", "Products, best match first."), "400": _ERR,
                              "413": _ERR, "415": _ERR, "503": _ERR}}},
            "/search/text": {"get": {
                "summary": "Search the catalogue with words (CLIP models only)",
                "parameters": [_q("q", {"type": "string", "maxLength": 500}, "What to look for.", True), _K, *_FILTERS],
                "responses": {"200": _ok("SearchResponse", "Products, best match first."), "400": _ERR,
                              "409": {"description": "The index's model has no text tower.",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                              "503": _ERR}}},
            "/categories": {"get": {
                "summary": "Every category, for the `category` filter",
                "responses": {"200": _ok("Categories", "Category paths, sorted.")}}},
            "/products/{sku}": {"get": {
                "summary": "One product with its images",
                "parameters": [_SKU],
                "responses": {"200": _ok("Product", "The product."), "404": _ERR}}},
            "/products/{sku}/similar": {"get": {
                "summary": "More like this: recommendations for a product",
                "description": "Neighbours of the product's images; itself and exact duplicates excluded, one entry "
                               "per product, no single category filling the list.",
                "parameters": [_SKU, {**_K, "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 8}}],
                "responses": {"200": _ok("SearchResponse", "Recommended products."), "404": _ERR, "503": _ERR}}},
            "/healthz": {"get": {
                "summary": "Liveness: the process answers (index and database not checked)",
                "responses": {"200": _ok("Health", "Alive; what is loaded, if anything.")}}},
            "/readyz": {"get": {
                "summary": "Readiness: index loaded and readable, database answering in time",
                "description": "`status` is `ready`, `degraded` (serving the previous build; `degraded` says why) "
                               "or `unavailable` (503, with `reasons`): send no traffic then.",
                "responses": {"200": _ok("Readiness", "Ready or degraded."),
                              "503": _ok("Readiness", "Not ready; `reasons` says why.")}}},
            "/feedback": {"post": {
                "summary": "Report a shopper's interaction with a search's results",
                "description": "For the shop's own front end: `request_id` is the one the search returned. Refused "
                               "with nothing stored: a malformed body or unknown `event` (400), an unknown or "
                               "pruned `request_id` or unknown `sku` (404), the same event on the same product of "
                               "the same search again, or the feedback log switched off (409), a product that search "
                               "did not show (422). A later `reject` replaces a `confirm` and the other way round "
                               "(one verdict each).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Feedback"}}}},
                "responses": {"201": _ok("FeedbackRecorded", "Recorded."), "400": _ERR, "404": _ERR, "409": _ERR,
                              "422": _ERR}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
        "components": {
            "responses": {"Error": {"description": "An error",
                                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string", "example": "unsupported_media_type"},
                                   "message": {"type": "string"}}}}},
                "Prediction": {"type": "object", "nullable": True, "properties": {
                    "category": {"type": "string"}, "confidence": {"type": "number"}, "level": {"type": "string"},
                    "alternatives": {"type": "array", "items": {"type": "object", "properties": {
                        "category": {"type": "string"}, "confidence": {"type": "number"}}}},
                    "routing": {"type": "string", "enum": ["filter", "top2", "all", "fused", "off"]}}},
                "Hit": {"type": "object", "properties": {
                    "sku": {"type": "string"}, "title": {"type": "string"}, "score": {"type": "number"},
                    "brand": {"type": "string", "nullable": True}, "price": {"type": "number", "nullable": True},
                    "currency": {"type": "string", "nullable": True},
                    "category": {"type": "string", "nullable": True},
                    "category_source": {"type": "string", "nullable": True, "enum": ["merchant", "predicted", None]},
                    "matched_image": {"type": "object", "properties": {
                        "id": {"type": "integer"}, "thumbnail_url": {"type": "string"}, "image_url": {"type": "string"}}},
                    "matched_images": {"type": "integer"}, "url": {"type": "string"}, "api_url": {"type": "string"},
                    "calibrated_score": {"type": "number", "nullable": True, "description":
                                         "Estimated probability that this is the photographed product (null "
                                         "when the build is not calibrated)."}}},
                "Box": {"type": "object", "description": "Fractions of the upright photo.", "properties": {
                    "x": {"type": "number"}, "y": {"type": "number"}, "w": {"type": "number"}, "h": {"type": "number"}}},
                "Region": {"type": "object", "properties": {
                    "box": {"$ref": "#/components/schemas/Box"},
                    "crop": {"type": "string", "description": "The box as a `crop` parameter."},
                    "confidence": {"type": "number", "nullable": True}, "match": _MATCH,
                    "score": {"type": "number"}, "source": {"type": "string", "enum": ["foreground", "grid"]},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}}}},
                "Categories": {"type": "object", "properties": {
                    "count": {"type": "integer"}, "categories": {"type": "array", "items": {"type": "object", "properties": {
                        "path": {"type": "string"}, "name": {"type": "string"}, "depth": {"type": "integer"},
                        "display": {"type": "string", "example": "Fruit > Apple"}}}}}},
                "SearchResponse": {"type": "object", "properties": {
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
                    "count": {"type": "integer"}, "k": {"type": "integer"}, "model": {"type": "string"},
                    "build_id": {"type": "string"}, "timings_ms": {"type": "object",
                                                                   "additionalProperties": {"type": "number"}},
                    "predicted_category": {"$ref": "#/components/schemas/Prediction"},
                    "filters": {"type": "object"},
                    "confidence": {"type": "number", "nullable": True, "description":
                                   "Estimated probability that the first product is the photographed one, calibrated "
                                   "on labelled shopper photos (`index calibrate --photos`, searched as this search "
                                   "was, fused with the category head when it is) or else on the catalogue's own "
                                   "photos when the index was built; null when uncalibrated (see `calibration`) "
                                   "and for text searches."},
                    "match": _MATCH,
                    "confidence_limit": {"type": "string", "nullable": True, "enum": ["filter", "flat", None],
                                         "description": "Why the confidence is lower than the calibration said: "
                                         "`filter` (the category head puts the photo's product outside the category "
                                         "filter; where no head bounds it, price filters too: the first product's "
                                         "chance among the same search's unfiltered products is lower, as when "
                                         "products the filters hide are closer to the photo), `flat` (the photo is "
                                         "one flat colour); null otherwise."},
                    "advice": {"type": "array", "items": {"type": "string", "enum": ["too_dark"]}, "description":
                               "Advice on the photo itself, its results kept: `too_dark` (the photo is nearly "
                               "black: try again with more light). Empty when there is none, and for text "
                               "searches and recommendations."},
                    "calibration": {"type": "object", "nullable": True, "description":
                                    "`status` calibrated (with `method`, `samples`, `strong_at`, `none_below` and "
                                    "`scoring`, the re-ranking/fusion path it holds for; `source`: `labelled` "
                                    "(shopper photos given to `index calibrate --photos`) or `catalogue` (the "
                                    "catalogue-only fallback: held-out catalogue photos as shoppers' photos, said "
                                    "in words in `fallback`); `features`: what the first "
                                    "product is judged by, `head` being the category head's probability of its "
                                    "category and `density` the photo's familiarity to the catalogue's photos) or "
                                    "uncalibrated (with `reason`: the fallback is raw similarity; also when this "
                                    "search was scored on another path than the calibration's, or the build lacks "
                                    "the density model its calibration reads)."},
                    "crop": {"allOf": [{"$ref": "#/components/schemas/Box"}], "nullable": True},
                    "request_id": {"type": "string", "nullable": True, "description":
                                   "This search in the feedback log, for `POST /feedback`; null when the shop "
                                   "switched the log off. The log is written just after the answer: feedback on "
                                   "a search whose entry could not be written is a 404."},
                    "regions": {"type": "array", "items": {"$ref": "#/components/schemas/Region"},
                                "description": "With objects=auto: the products found in the photo."}}},
                "Product": {"type": "object", "properties": {
                    "sku": {"type": "string"}, "title": {"type": "string"},
                    "description": {"type": "string", "nullable": True}, "brand": {"type": "string", "nullable": True},
                    "price": {"type": "number", "nullable": True}, "currency": {"type": "string", "nullable": True},
                    "category": {"type": "string", "nullable": True},
                    "category_source": {"type": "string", "nullable": True},
                    "predicted_category": {"type": "string", "nullable": True},
                    "predicted_confidence": {"type": "number", "nullable": True},
                    "attributes": {"type": "object", "description": "The attributes the shop shows "
                                   "(SHOPSEARCH_VISIBLE_ATTRIBUTES; none by default)."},
                    "images": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "integer"}, "role": {"type": "string"}, "width": {"type": "integer"},
                        "height": {"type": "integer"}, "status": {"type": "string"},
                        "thumbnail_url": {"type": "string"}, "image_url": {"type": "string"}}}},
                    "url": {"type": "string"}, "similar_url": {"type": "string"}}},
                "Feedback": {"type": "object", "required": ["request_id", "sku", "event"], "properties": {
                    "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                                   "description": "The search's `request_id`."},
                    "sku": {"type": "string", "maxLength": 200, "description": "A product that search showed."},
                    "event": {"type": "string", "enum": ["click", "confirm", "reject", "add_to_cart", "purchase"]}}},
                "FeedbackRecorded": {"type": "object", "properties": {"recorded": {"type": "object", "properties": {
                    "request_id": {"type": "string"}, "sku": {"type": "string"}, "event": {"type": "string"},
                    "at": {"type": "string", "format": "date-time"}}}}},
                "Health": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["ok"]},
                    "index_loaded": {"type": "boolean"}, "model": {"type": "string"},
                    "build_id": {"type": "string"}, "vectors": {"type": "integer"}, "index_type": {"type": "string"},
                    "dim": {"type": "integer"}, "has_text": {"type": "boolean"}, "router": {"type": "boolean"}}},
                "Readiness": {"type": "object", "required": ["status", "reasons"], "properties": {
                    "status": {"type": "string", "enum": ["ready", "degraded", "unavailable"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "degraded": {"type": "string"}, "index_loaded": {"type": "boolean"},
                    "build_id": {"type": "string"}, "vectors": {"type": "integer"}, "model": {"type": "string"}}},
            },
        },
    }
