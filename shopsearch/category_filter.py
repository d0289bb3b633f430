"""A shopper's or script's category filter -> the catalogue's category path.

`Fruit > Banana`, `fruit/banana`, `Banana` and `granny smith` all name a path such as
`Fruit/Apple/Granny-Smith`: parts are split on `>` or `/`, compared without case and with
`-`/`_` as spaces, and a trailing part of a path (the leaf name) is enough when only one
category ends that way. Anything else is an UnknownCategoryError naming how to list them."""
from __future__ import annotations

import re
from typing import Sequence

from shopsearch.errors import UnknownCategoryError

HOW_TO_LIST = "GET /api/v1/categories lists them"


def _parts(text: str) -> tuple[str, ...]:
    return tuple(p for p in (re.sub(r"[\s_-]+", " ", part).strip().casefold()
                             for part in re.split(r"\s*[>/]\s*", text)) if p)


def display(path: str) -> str:
    """`Fruit/Apple` -> `Fruit > Apple` (how the README and the pages write a path)."""
    return " > ".join(path.split("/"))


def listing(paths: Sequence[str], most: int = 12) -> str:
    """`this shop's categories: Fruit > Apple, ...` for an edge that has no listing route (the CLI)."""
    shown = ", ".join(display(p) for p in sorted(paths)[:most])
    return f"this shop's categories: {shown}{' …' if len(paths) > most else ''}" if paths else "this shop has no categories"


def resolve_category(text: str, paths: Sequence[str], how_to_list: str = HOW_TO_LIST) -> str:
    """The one category path `text` names, else UnknownCategoryError (400) ending with `how_to_list`."""
    want = _parts(text)
    if not want:
        raise UnknownCategoryError(f"category {text!r} names no category; {how_to_list}")
    keyed = [(p, _parts(p)) for p in paths]
    exact = [p for p, k in keyed if k == want]
    if exact:
        return exact[0]
    tail = sorted(p for p, k in keyed if len(k) > len(want) and k[-len(want):] == want)
    if len(tail) == 1:
        return tail[0]
    if tail:
        shown = ", ".join(display(p) for p in tail[:5])
        raise UnknownCategoryError(f"category {text!r} is ambiguous: {shown}{' …' if len(tail) > 5 else ''}; "
                                   "give the full path, e.g. " + repr(display(tail[0])))
    raise UnknownCategoryError(f"there is no category {text!r} in this shop; {how_to_list}")
