"""What a results page carries into its next search (Flask's test client): a filter or "Show
more" keeps the crop box and the objects found in the photo; the page's title says the outcome;
a result card's link names its product once.

Fixtures come from tests/test_webapp_trust.py (20 calibrated products, FakeEmbedder)."""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest

from tests.conftest import jitter, make_image
from tests.test_webapp_trust import _composite, _jpeg, _page, _unknown, client, trust_site  # noqa: F401 - fixtures


class _Forms(HTMLParser):
    """Each form's fields by form id: [(name, value)] for inputs (hidden or not) and selects."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, list[tuple[str, str]]] = {}
        self._form: str | None = None
        self._select: str | None = None
        self._selected: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._form = a.get("id") or f"form-{len(self.forms)}"
            self.forms[self._form] = []
        elif self._form and tag == "input" and a.get("name"):
            self.forms[self._form].append((a["name"], a.get("value") or ""))
        elif self._form and tag == "select":
            self._select, self._selected = a.get("name"), ""
        elif self._select is not None and tag == "option" and "selected" in a:
            self._selected = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "select" and self._select is not None:
            self.forms[self._form].append((self._select, self._selected or ""))
            self._select = None
        elif tag == "form":
            self._form = None


def forms(html: str) -> dict[str, list[tuple[str, str]]]:
    p = _Forms()
    p.feed(html)
    return p.forms


def post_form(client, fields: list[tuple[str, str]], **changes):
    """Post a results page's form back as the browser would (multipart), with some fields changed."""
    kept = [(n, v) for n, v in fields if n not in changes] + [(n, v) for n, v in changes.items() if v is not None]
    data: dict[str, list[str]] = {}
    for n, v in kept:
        data.setdefault(n, []).append(v)
    return client.post("/search", data=data, content_type="multipart/form-data")


def title(html: str) -> str:
    return re.search(r"<title>(.*?)</title>", html, re.S).group(1).strip()


def region_ids(html: str) -> list[str]:
    return re.findall(r'<section class="region-results" id="(region-\d+)"', html)


def region_firsts(html: str) -> list[str]:
    """The first product of each object's section, in section order."""
    out = []
    for rid in region_ids(html):
        part = html[html.index(f'id="{rid}"'):]
        part = part[: part.index("</section>")]
        m = re.search(r'<article class="card[^"]*" data-sku="([^"]+)"', part)
        out.append(m.group(1) if m else None)
    return out


CROP = "0.0000,0.1000,0.3333,0.8000"  # the left third of the composite: product 3


# -- issue 1: the crop box and the objects survive a filter and "Show more" --------------------
def test_filters_and_show_more_keep_the_crop(client):
    photo = _jpeg(_composite([3, 11, 6], size=(480, 200)))
    html = _page(client, photo, crop=CROP).get_data(as_text=True)
    assert html.count('class="crop-outline"') == 1
    f = forms(html)
    for form in ("filter-form", "more-form"):
        assert ("crop", CROP) in f[form], (form, f[form])
    first = re.search(r'<article class="card[^"]*" data-sku="([^"]+)"', html).group(1)
    # a category filter: the outline stays, the search stays on the part chosen, and carries it on
    again = post_form(client, f["filter-form"], category="Fruit").get_data(as_text=True)
    assert again.count('class="crop-outline"') == 1 and f'data-box="{CROP}"' in again
    assert ("crop", CROP) in forms(again)["filter-form"]
    assert "Filters apply to the part of your photo you chose." in again
    # "Show more": more of the same crop's products
    more = post_form(client, f["more-form"]).get_data(as_text=True)
    assert more.count('class="crop-outline"') == 1
    assert re.search(r'<article class="card[^"]*" data-sku="([^"]+)"', more).group(1) == first
    assert len(re.findall(r'<article class="card', more)) > len(re.findall(r'<article class="card', html))


def test_filters_and_show_more_keep_the_objects_found(client):
    photo = _jpeg(_composite([2, 5, 9]))
    html = _page(client, photo, objects="auto").get_data(as_text=True)
    ids, firsts = region_ids(html), region_firsts(html)
    assert len(ids) >= 3 and {"S2", "S5", "S9"} <= set(firsts), firsts
    f = forms(html)
    for form in ("filter-form", "more-form"):
        assert ("objects", "4") in f[form]
        assert len([v for n, v in f[form] if n == "region"]) == len(ids), form
    # no filter (k as it was): the very same objects, outlines and first products
    same = post_form(client, f["filter-form"]).get_data(as_text=True)
    assert region_firsts(same) == firsts
    assert same.count('class="region-outline') == len(ids) and 'class="region-chips"' in same
    assert re.findall(r'data-box="([^"]+)" data-z', same) == re.findall(r'data-box="([^"]+)" data-z', html)
    # a category filter: each object is searched again within it, still numbered as on the photo
    fruit = post_form(client, f["filter-form"], category="Fruit").get_data(as_text=True)
    assert region_ids(fruit) == ids and fruit.count('class="region-outline') == len(ids)
    for rid in ids:
        part = fruit[fruit.index(f'id="{rid}"'):]
        part = part[: part.index("</section>")]
        assert 'title="Fruit › ' in part or "Nothing in these filters" in part
    # S5 (Fruit/Banana: 5 % 4 == 1) is still found where it is; S2 (Dairy) and S9 (Fruit/Banana) too
    by_index = dict(zip(ids, firsts))
    kept = dict(zip(region_ids(fruit), region_firsts(fruit)))
    assert kept[[r for r, s in by_index.items() if s == "S5"][0]] == "S5"
    assert "Filters apply to the whole photo and to each of the" in fruit
    assert len([v for n, v in forms(fruit)["filter-form"] if n == "region"]) == len(ids)
    # "Show more" keeps them too
    more = post_form(client, f["more-form"]).get_data(as_text=True)
    assert region_firsts(more) == firsts and 'class="region-chips"' in more


def test_objects_are_numbered_in_reading_order(client):
    html = _page(client, _jpeg(_composite([9, 2, 5])), objects="auto").get_data(as_text=True)
    boxes = [tuple(map(float, b.split(","))) for b in re.findall(r'class="region-outline[^"]*" data-box="([^"]+)"', html)]
    labels = re.findall(r'aria-label="Object (\d+):', html)
    assert labels == [str(n) for n in range(1, len(boxes) + 1)]
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # one row: left to right
    assert region_firsts(html)[:3] == ["S9", "S2", "S5"]


@pytest.mark.parametrize("region", ["0,0,0.5,0.5", "0,0,0.5,0.5|0|AAAA", "0,0,2,1|0|" + "A" * 12])
def test_a_tampered_region_is_refused_with_a_message(client, region):
    html = _page(client, _jpeg(_composite([2, 5, 9]))).get_data(as_text=True)
    r = post_form(client, forms(html)["filter-form"], region=region)
    assert r.status_code == 400 and "Traceback" not in r.get_data(as_text=True)


# -- issue 2: the title says the outcome ---------------------------------------------------------
def test_results_title_says_verdict_and_first_product(client):
    strong = _page(client, _jpeg(jitter(make_image(4), seed=3, amount=8))).get_data(as_text=True)
    assert 'data-match="strong"' in strong
    assert title(strong) == "Close match: Thing 4 · ShopSearch"
    none = _page(client, _jpeg(_unknown())).get_data(as_text=True)
    assert title(none) == "No close match · ShopSearch"
    objects = _page(client, _jpeg(_composite([2, 5, 9])), objects="auto").get_data(as_text=True)
    assert re.fullmatch(r"\d products found in your photo: Thing \d+(, Thing \d+)+ · ShopSearch", title(objects))
    nothing = post_form(client, forms(strong)["filter-form"], min_price="1000")
    assert title(nothing.get_data(as_text=True)).startswith(("No products found", "No close match"))


# -- issue 4: a card's link names the product once ------------------------------------------------
def test_card_thumbnails_are_decorative(client):
    html = _page(client, _jpeg(jitter(make_image(4), seed=3, amount=8))).get_data(as_text=True)
    links = re.findall(r'<a class="card-link".*?</a>', html, re.S)
    assert links
    for link in links:
        assert all(alt == "" for alt in re.findall(r'<img[^>]* alt="([^"]*)"', link)), link
        assert re.search(r'<h3 class="title">Thing \d+</h3>', link)
