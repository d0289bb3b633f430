"""GET /images/<image_id>/<size>: catalogue images by id, never by path."""
from __future__ import annotations

from flask import Blueprint, current_app, send_file

from webapp.thumbs import ImageUnavailableError, ThumbCache

bp = Blueprint("images", __name__)


def thumbs() -> ThumbCache:
    return current_app.extensions["shopsearch_thumbs"]


#: ids beyond a 64-bit integer cannot exist (and overflow the database driver): 404 at routing
@bp.get("/images/<int(max=9223372036854775807):image_id>/<int(max=100000):size>")
def image(image_id: int, size: int):
    holder = current_app.extensions["shopsearch"]
    info = holder.image(image_id)
    if info is None:
        raise ImageUnavailableError(f"no catalogue image {image_id}")
    path = thumbs().thumbnail(info, size)
    resp = send_file(path, mimetype="image/jpeg", conditional=True, max_age=86400)
    resp.headers["Cache-Control"] = "public, max-age=86400"
    return resp
