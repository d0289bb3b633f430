"""A careless operator at the CLI: wrong database URLs, a database without the catalogue,
manifests with duplicate SKUs, imports and deletes that did nothing. Each gets one clear line
and an exit code a script can trust (README: exit codes)."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from indexer.cli import cli
from tests.conftest import PG_URL, _fresh_pg_url, _pg_available, make_image

needs_pg = pytest.mark.skipif(not _pg_available() and not os.environ.get("CI"), reason="PostgreSQL not reachable")


def run(data_dir, *args: str):
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), *args], catch_exceptions=False)


def _base(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[0]


@pytest.mark.parametrize("url,says", [
    ("not a url", "cannot parse the database URL"),
    ("postgresql://postgres@127.0.0.1:1/test", "cannot connect to the catalogue database"),
    ("mysql+nosuchdriver://u@h/db", "unsupported database URL"),
    ("sqlite:////proc/no/such/dir/catalogue.db", "cannot create the folder of the SQLite database"),
    ("sqlite:////proc/catalogue.db", "cannot connect to the catalogue database"),
])
def test_a_wrong_database_url_is_one_clear_line(tmp_path, url, says):
    for args in (["stats"], ["catalogue", "problems"], ["db", "current"]):
        res = run(tmp_path, "--database-url", url, *args)
        assert res.exit_code == 1, res.output
        # a SQLite file that does not exist is no catalogue to a command that only reads
        expected = "there is no catalogue at" if url.startswith("sqlite") and args[0] != "db" else says
        assert expected in res.output and "[database_unavailable]" in res.output, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["stats"], ["index", "status"], ["catalogue", "problems"], ["catalogue", "show", "A"],
                                  ["search", "photo.png"]])
def test_read_only_commands_make_no_catalogue_at_a_mistyped_path(tmp_path, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image(1).save(tmp_path / "photo.png")
    typo = tmp_path / "vra"
    res = run(typo, *args)
    assert res.exit_code == 1 and f"there is no catalogue at {typo / 'catalogue.db'}" in res.output, res.output
    assert "--data-dir" in res.output and not (typo / "catalogue.db").exists()
    res = CliRunner().invoke(cli, ["--database-url", f"sqlite:///{tmp_path / 'typo.db'}", *args])
    assert res.exit_code == 1 and "there is no catalogue at" in res.output and not (tmp_path / "typo.db").exists()


@needs_pg
def test_no_such_postgres_database_and_a_hidden_password(tmp_path):
    url = _base(PG_URL).replace("postgres@", "postgres:s3cret@") + "/no_such_database_here"
    res = run(tmp_path, "--database-url", url, "stats")
    assert res.exit_code == 1 and "does not exist" in res.output and "no_such_database_here" in res.output
    assert "s3cret" not in res.output and len(res.output.strip().splitlines()) == 1


@needs_pg
def test_the_postgres_spelling_is_accepted(tmp_path):
    url = _fresh_pg_url()
    assert url.startswith("postgresql://")
    res = run(tmp_path, "--database-url", "postgres://" + url[len("postgresql://"):], "stats", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["products"] == 0


def _import_and_build(tmp_path, data, *extra: str) -> None:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(3):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "m.csv").write_text("sku,images\n" + "".join(f"S{i},imgs/{i}.png\n" for i in range(3)))
    assert run(data, *extra, "catalogue", "import", str(tmp_path / "m.csv"), "--workers", "1").exit_code == 0
    assert run(data, *extra, "index", "build", "--model", "colorhist", "--workers", "1").exit_code == 0


def test_search_against_a_database_without_the_catalogue_is_an_error(tmp_path, db_url):
    data = tmp_path / "data"
    make_image(1).save(tmp_path / "q.png")
    res = run(data, "search", str(tmp_path / "q.png"))  # a fresh data dir: nothing imported (README: exit codes)
    assert res.exit_code == 1 and "there is no catalogue at" in res.output, res.output
    assert res.output.rstrip().endswith("[database_unavailable]") and not data.exists()
    _import_and_build(tmp_path, data)
    assert run(data, "search", str(tmp_path / "imgs" / "1.png")).exit_code == 0
    (data / "index" / "CURRENT").unlink()
    res = run(data, "search", str(tmp_path / "q.png"))  # a catalogue, no index build
    assert res.exit_code == 1 and res.output.rstrip().endswith("[index_not_found]"), res.output
    _import_and_build(tmp_path, data)
    res = run(data, "--database-url", db_url, "search", str(tmp_path / "imgs" / "1.png"))  # another, empty one
    assert res.exit_code == 1, res.output
    if db_url.startswith("sqlite"):  # a file that does not exist: no catalogue at all
        assert "there is no catalogue at" in res.output and res.output.rstrip().endswith("[database_unavailable]")
    else:  # a database that exists, without the catalogue's products
        assert "holds no products" in res.output and "--database-url" in res.output
        assert res.output.rstrip().endswith("[catalogue_empty]")
    assert "no matching products" not in res.output and "Traceback" not in res.output


def _images(tmp_path, n: int = 3) -> None:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(n):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")


def test_duplicate_skus_are_reported_with_their_rows_and_the_last_row_wins(tmp_path, db_url):
    _images(tmp_path)
    (tmp_path / "m.csv").write_text("sku,title,images\nD,first,imgs/0.png\nE,other,imgs/2.png\nD,second,imgs/1.png\n")
    args = ["--database-url", db_url, "catalogue", "import", str(tmp_path / "m.csv"), "--workers", "1", "--json"]
    rep = json.loads(run(tmp_path, *args).stdout)
    assert (rep["products_created"], rep["products_updated"], rep["products_unchanged"]) == (2, 0, 0)
    (dup,) = rep["problems"]
    assert (dup["where"], dup["sku"], dup["kind"]) == ("m.csv row 4", "D", "duplicate")
    assert "first on m.csv row 2" in dup["reason"]
    human = run(tmp_path, *args[:-1])  # as a person reads it: the repeated row is the one imported, not skipped
    assert "m.csv row 4 (sku D): duplicate SKU 'D', first on m.csv row 2; imported from its last row" in human.output
    assert "skipped m.csv row 4" not in human.output
    shown = json.loads(run(tmp_path, "--database-url", db_url, "catalogue", "show", "D").stdout)
    assert shown["title"] == "second" and [i["path"].rsplit("/", 1)[1] for i in shown["images"]] == ["1.png"]
    # the unchanged manifest again: nothing updated (each duplicate row used to count as an update)
    again = json.loads(run(tmp_path, *args).stdout)
    assert (again["products_created"], again["products_updated"], again["products_unchanged"]) == (0, 0, 2)
    # --strict refuses the file before writing anything
    (tmp_path / "n.csv").write_text("sku,title,images\nN,new,imgs/0.png\nD,third,imgs/2.png\nD,fourth,imgs/2.png\n")
    res = run(tmp_path, "--database-url", db_url, "catalogue", "import", str(tmp_path / "n.csv"), "--strict")
    assert res.exit_code == 1 and "refused (--strict)" in res.output and "n.csv row 4" in res.output
    assert "last row" not in res.output  # nothing was imported, from any row
    assert "Traceback" not in res.output
    gone = run(tmp_path, "--database-url", db_url, "catalogue", "show", "N")
    assert gone.exit_code == 1 and "no product with SKU" in gone.output


def test_a_jsonl_reimport_changes_nothing(tmp_path, db_url):
    _images(tmp_path)
    rows = [{"sku": "J", "title": "j", "price": 2.5, "currency": "eur", "category": ["Home", "Bath"],
             "images": ["imgs/0.png", "imgs/1.png"], "attributes": {"n": 1, "tags": ["a", "b"]}},
            {"sku": "K", "price": "1e2", "images": "imgs/2.png", "colour": "red"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--database-url", db_url, "catalogue", "import", str(tmp_path / "m.jsonl"), "--workers", "1", "--json"]
    first = json.loads(run(tmp_path, *args).stdout)
    assert first["products_created"] == 2 and not first["problems"]
    again = json.loads(run(tmp_path, *args).stdout)
    assert (again["products_created"], again["products_updated"], again["products_unchanged"]) == (0, 0, 2)


def test_an_image_folder_reimport_keeps_what_a_manifest_set(tmp_path, db_url):
    """A folder of images says nothing of prices, brands or attributes: importing it again after
    a `sku,price,...` manifest set them leaves them (it reset them to nothing)."""
    (tmp_path / "shop" / "Fruit").mkdir(parents=True)
    make_image(0).save(tmp_path / "shop" / "Fruit" / "green_apple.png")
    base = ["--database-url", db_url, "catalogue", "import"]
    assert run(tmp_path, *base, str(tmp_path / "shop"), "--workers", "1").exit_code == 0
    (tmp_path / "prices.csv").write_text("sku,price,currency,brand,origin\nFruit/green_apple,1.25,eur,Orchard,NZ\n")
    assert run(tmp_path, *base, str(tmp_path / "prices.csv"), "--workers", "1").exit_code == 0
    again = json.loads(run(tmp_path, *base, str(tmp_path / "shop"), "--workers", "1", "--json").stdout)
    assert again["products_updated"] == 0 and again["products_unchanged"] == 1
    shown = json.loads(run(tmp_path, "--database-url", db_url, "catalogue", "show", "Fruit/green_apple").stdout)
    assert (shown["title"], shown["price"], shown["currency"], shown["brand"], shown["attributes"]) == \
        ("green apple", 1.25, "EUR", "Orchard", {"origin": "NZ"})


def test_a_slash_inside_a_json_list_category_stays_one_level(tmp_path, db_url):
    _images(tmp_path)
    (tmp_path / "m.jsonl").write_text(json.dumps({"sku": "J", "category": ["Home", "Bath/Shower"],
                                                  "images": ["imgs/0.png"]}) + "\n")
    (tmp_path / "m.csv").write_text('sku,category,images\nC,"[""Home"", ""Bath/Shower""]",imgs/1.png\n'
                                    "T,Home/Bath/Shower,imgs/2.png\n")
    for m in ("m.jsonl", "m.csv"):
        res = run(tmp_path, "--database-url", db_url, "catalogue", "import", str(tmp_path / m), "--workers", "1")
        assert res.exit_code == 0, res.output
    from shopsearch.catalogue.store import CatalogueStore

    store = CatalogueStore.open(db_url)
    try:
        j, c, t = (store.get_product(s) for s in ("J", "C", "T"))
        levels = {x.path: x.depth for x in store.categories()}
    finally:
        store.close()
    assert j.category == c.category == "Home/Bath\u2215Shower"  # two levels, the second named Bath/Shower
    assert t.category == "Home/Bath/Shower"  # three levels, as a path string says
    assert levels["Home/Bath\u2215Shower"] == 1 and levels["Home/Bath/Shower"] == 2


def test_an_import_of_nothing_and_a_delete_of_nothing_exit_non_zero(tmp_path, db_url):
    _images(tmp_path, 1)
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    (tmp_path / "rows.csv").write_text("sku,price,images\n,1,imgs/0.png\nX,abc,imgs/0.png\n")  # every row fails
    (tmp_path / "imgs.csv").write_text("sku,images\nA,imgs/bad.jpg\nB,imgs/missing.png\n")  # every image fails
    (tmp_path / "ok.csv").write_text("sku,images\nOK,imgs/0.png\nB,imgs/missing.png\n")
    for name, code in (("rows.csv", 1), ("imgs.csv", 1), ("ok.csv", 0)):
        res = run(tmp_path, "--database-url", db_url, "catalogue", "import", str(tmp_path / name), "--workers", "1")
        assert res.exit_code == code, (name, res.output)
        assert "Traceback" not in res.output
    res = run(tmp_path, "--database-url", db_url, "catalogue", "import", str(tmp_path / "rows.csv"), "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["products_created"] == 0
    # the error line ends in its code, as every other one does (README: exit codes)
    assert res.stderr.strip().splitlines()[-1] == \
        "Error: nothing was imported: no row gave a product (2 problem(s) reported) [nothing_imported]"
    res = run(tmp_path, "--database-url", db_url, "catalogue", "delete", "NOPE", "GHOST")
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == \
        "Error: nothing was deleted: no product with SKU GHOST, NOPE [product_not_found]"
    res = run(tmp_path, "--database-url", db_url, "catalogue", "delete", "OK", "NOPE", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"deleted": ["OK"], "not_found": ["NOPE"]}


def test_an_import_whose_every_image_is_unusable_says_its_products_were_written(tmp_path, db_url):
    """Its products are in the catalogue (without an image to index): the error says so, where it
    said "nothing was imported" of a product `catalogue show` then showed. Still exit 1 (README:
    exit codes): a catalogue none of whose images can be indexed is no search."""
    (tmp_path / "x.csv").write_text("sku,images\nZZ-1,img/missing.jpg\n")
    args = ["--database-url", db_url, "catalogue", "import", str(tmp_path / "x.csv"), "--workers", "1"]
    res = run(tmp_path, *args)
    assert res.exit_code == 1 and "products: 1 created" in res.stdout
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: no usable image: every image named was missing or unusable, so the 1 "
                           "product(s) imported have no image to index") and last.endswith("[no_usable_images]")
    assert "nothing was imported" not in res.output
    assert run(tmp_path, "--database-url", db_url, "catalogue", "show", "ZZ-1").exit_code == 0
    again = run(tmp_path, *args, "--json")  # the unchanged file again: the same outcome
    assert again.exit_code == 1 and "[no_usable_images]" in again.stderr
    assert json.loads(again.stdout)["products_unchanged"] == 1


def test_import_problems_are_said_once_at_the_default_log_level(tmp_path):
    """Problems are the report's (human lines, --json): the library logs each at INFO, so the
    default --log-level WARNING no longer prints them twice; INFO keeps the structured line."""
    _images(tmp_path, 1)
    (tmp_path / "m.csv").write_text("sku,images\nOK,imgs/0.png\nB,imgs/missing.png\n")
    res = run(tmp_path, "catalogue", "import", str(tmp_path / "m.csv"), "--workers", "1")
    assert res.exit_code == 0, res.output
    assert "skipped " in res.stderr and "missing.png" in res.stderr
    assert "import problem" not in res.stderr and '"level"' not in res.stderr
    res = run(tmp_path, "--log-level", "INFO", "catalogue", "import", str(tmp_path / "m.csv"), "--workers", "1")
    logged = [json.loads(x) for x in res.stderr.splitlines() if '"msg": "import problem"' in x]
    assert [(x["level"], x["logger"], x["sku"]) for x in logged] == [("INFO", "shopsearch.importer", "B")]


def test_a_rebuild_without_model_keeps_the_serving_model_and_says_so(tmp_path, monkeypatch):
    """`index build --force` without --model rebuilds with the serving build's model: neither
    "auto" nor SHOPSEARCH_MODEL switches the model of an existing index (only --model does)."""
    data = tmp_path / "data"
    _import_and_build(tmp_path, data)  # colorhist
    monkeypatch.setenv("SHOPSEARCH_MODEL", "efficientnet-lite0")
    for args in ([], ["--precision", "fp32"]):
        res = run(data, "index", "build", "--force", "--workers", "1", "--json", *args)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["model"] == "colorhist"
        assert "model: keeping colorhist, the model of the serving build" in res.stderr
        assert "--model" in res.stderr
    res = run(data, "index", "build", "--force", "--workers", "1", "--model", "colorhist")
    assert res.exit_code == 0 and "keeping" not in res.output  # asked for: nothing to say
    assert "Default: the serving build's model" in " ".join(run(data, "index", "build", "--help").output.split())


def test_a_spreadsheets_csv_imports_and_a_header_without_sku_says_what_it_holds(tmp_path):
    """Spreadsheets save "CSV" with semicolons or tabs in many locales, and headers as people
    type them ("SKU", " Images"): both import. A header with no sku column is one line saying
    what its first row holds (it said 'sku' and 'image' were needed, of a file that had them)."""
    _images(tmp_path, 3)
    (tmp_path / "semi.csv").write_text("SKU;Title;Price;Images;Colour\r\nS0;Oat milk;1,50;imgs/0.png;white\r\n"
                                       "S1;Apple;0.50;imgs/1.png;red\r\n", encoding="utf-8-sig")
    (tmp_path / "tabs.tsv.csv").write_text("sku\t title \timages\nS2\tBanana\timgs/2.png\n")
    res = run(tmp_path, "catalogue", "import", str(tmp_path / "semi.csv"), "--workers", "1", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["products_created"] == 2 and report["problems"] == []  # a ";" CSV's decimal comma is read
    s0 = json.loads(run(tmp_path, "catalogue", "show", "S0").stdout)
    assert s0["price"] == 1.5
    s1 = json.loads(run(tmp_path, "catalogue", "show", "S1").stdout)
    assert (s1["title"], s1["price"], s1["attributes"], len(s1["images"])) == ("Apple", 0.5, {"Colour": "red"}, 1)
    # in a comma CSV a quoted "1,50" stays ambiguous (a thousands separator?): its row's problem, said so
    (tmp_path / "comma.csv").write_text('sku,price,images\nC0,"1,50",imgs/0.png\n')
    report = json.loads(run(tmp_path, "catalogue", "import", str(tmp_path / "comma.csv"), "--json").stdout)
    assert "write decimals with a point" in json.dumps(report["problems"])
    (tmp_path / "both.csv").write_text("sku;price;images\nC1;1.234,50;imgs/0.png\nC2;\u20ac 2,99;imgs/0.png\n")
    report = json.loads(run(tmp_path, "catalogue", "import", str(tmp_path / "both.csv"), "--json").stdout)
    # dot and comma: not guessed; the hint says what this file accepts (its decimal comma too)
    reasons = {p["sku"]: p["reason"] for p in report["problems"]}
    assert reasons["C1"] == ("price '1.234,50' is not a number (write decimals with a comma or a point, "
                             "e.g. 1,50 or 1.50, and no thousands separator)")
    assert reasons["C2"].startswith("price '\u20ac 2,99' is not a number")  # the cell as the file holds it
    assert run(tmp_path, "catalogue", "import", str(tmp_path / "tabs.tsv.csv"), "--workers", "1").exit_code == 0
    assert json.loads(run(tmp_path, "catalogue", "show", "S2").stdout)["title"] == "Banana"

    (tmp_path / "ids.csv").write_text("id,name,picture\n1,x,imgs/0.png\n")
    res = run(tmp_path, "catalogue", "import", str(tmp_path / "ids.csv"))
    assert res.exit_code == 1 and "[manifest_error]" in res.output and "Traceback" not in res.output
    assert "needs a header row with a 'sku' column" in res.output and "its first row is 'id,name,picture'" in res.output
    assert "'images' among them, are optional" in res.output  # only sku is required: sku,price files import
