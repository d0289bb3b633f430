"""The URLs of a result card (its product page, its API resource, its matched image) without
url_for per card: a search answer of 10 products called url_for 40 times, which cost more CPU
than the search's own catalogue read (issue 18). Each route's URL is built once with url_for
for a stand-in value, split around it, and then filled in with the value quoted as werkzeug
quotes it; one per script root (the only part of the request a relative URL depends on).

The templates check themselves against url_for when they are made (values that need quoting
included): should routing ever quote differently, every card falls back to url_for."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from urllib.parse import quote

from flask import current_app, request, url_for

#: stand-ins that url_for leaves as they are (unreserved characters, digits)
_TEXT_MARK = "~shopsearch-mark~"
_NUMBER_MARK = 987654321987654
#: what the templates are checked with: values werkzeug must quote, or must not
_CHECK_SKUS = ("A b/c?d#e%f&g=h+i~é€", "plain-SKU_1.2", " ", "..", "a//b", "'!$()*,;:@")
_CHECK_IDS = (1, 42, 9223372036854775807)
#: script roots remembered per app (a reverse proxy has one or two)
_MAX_ROOTS = 16


def _path_segment(value: object) -> str:
    # werkzeug's BaseConverter.to_url (path and string converters): the WHATWG path-segment set
    return quote(str(value), safe="!$&'()*+,/:;=@")


def _template(endpoint: str, arg: str, mark: object, to_url: Callable[[object], str],
              **fixed: object) -> Callable[[object], str] | None:
    """value -> url_for(endpoint, arg=value, **fixed), or None when the URL cannot be split."""
    parts = url_for(endpoint, **{arg: mark}, **fixed).split(str(mark))
    if len(parts) != 2:
        return None
    head, tail = parts
    return lambda value: head + to_url(value) + tail


@dataclass(frozen=True)
class CardUrls:
    """One card's URLs: call `product(sku)`, `api_product(sku)`, `image(id, size)`."""

    product: Callable[[str], str]
    api_product: Callable[[str], str]
    image_320: Callable[[int], str]
    image_1280: Callable[[int], str]

    @classmethod
    def build(cls) -> "CardUrls":
        """Templates for this request's script root, or url_for itself where a template would differ."""
        def plain(endpoint: str, arg: str, **fixed: object) -> Callable[[object], str]:
            return lambda value: url_for(endpoint, **{arg: value}, **fixed)

        def checked(endpoint: str, arg: str, mark: object, to_url: Callable[[object], str], samples: tuple,
                    **fixed: object) -> Callable[[object], str]:
            t = _template(endpoint, arg, mark, to_url, **fixed)
            exact = plain(endpoint, arg, **fixed)
            ok = t is not None and all(t(v) == exact(v) for v in samples)
            return t if ok else exact  # type: ignore[return-value]

        return cls(checked("pages.product", "sku", _TEXT_MARK, _path_segment, _CHECK_SKUS),
                   checked("api.product", "sku", _TEXT_MARK, _path_segment, _CHECK_SKUS),
                   checked("images.image", "image_id", _NUMBER_MARK, lambda v: str(int(v)), _CHECK_IDS, size=320),
                   checked("images.image", "image_id", _NUMBER_MARK, lambda v: str(int(v)), _CHECK_IDS, size=1280))


def card_urls() -> CardUrls:
    """The CardUrls of this request's script root (made on its first request, then reused)."""
    cache: dict[str, CardUrls] = current_app.extensions.setdefault("shopsearch_card_urls", {})
    root = request.environ.get("SCRIPT_NAME", "")
    urls = cache.get(root)
    if urls is None:
        if len(cache) >= _MAX_ROOTS:
            cache.clear()
        urls = cache[root] = CardUrls.build()
    return urls
