"""Re-ranking settings have upper bounds (a security probe allocated 75 GiB with
`rerank=qe=100000000,kr=100000000,k2=100000000,depth=3000`), refused with the allowed range
named by the API (400), the CLI (usage error), benchmark configs and a build's settings; and
no search asks the index for more candidates than it holds, filtered or not."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from indexer.cli import cli
from shopsearch.config import Settings
from shopsearch.errors import ConfigError
from shopsearch.evaluation.configs import BenchConfig, parse_config
from shopsearch.index import IndexStore, VectorIndex
from shopsearch.rerank import LIMITS, RerankingIndex, RerankOptions, parse_rerank
from tests.test_webapp import api_search, app_for, make_site, photo

#: one spec just past each upper bound, and the range its refusal names
PAST = [("qe=51", "qe must be a whole number from 0 to 50"),
        ("kr=51", "kr must be a whole number from 1 to 50"),
        ("kr,k2=21", "k2 must be a whole number from 1 to 20"),
        ("kr,depth=501", "depth must be a whole number from 2 to 500"),
        ("qe,alpha=21", "alpha must be a number from 0 to 20"),
        ("kr,lam=1.5", "lam must be a number from 0 to 1"),
        # the probe's own requests
        ("qe=100000000,kr=100000000,k2=100000000,depth=3000", "qe must be a whole number from 0 to 50"),
        ("kr,k2=30,depth=3000", "k2 must be a whole number from 1 to 20"),
        ("kr,depth=20000000", "depth must be a whole number from 2 to 500"),
        ("qe=inf", "from 0 to 50, not inf"), ("kr=nan", "from 1 to 50, not nan"),
        ("kr,depth=2.5", "depth must be a whole number")]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("limits"), n=6)


@pytest.fixture
def client(site):
    app = app_for(site)
    yield app.test_client()
    app.extensions["shopsearch"].close()


# -- the parser ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,message", PAST)
def test_a_setting_past_its_bound_is_refused_naming_the_range(spec, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_rerank(spec)


def test_the_bounds_admit_every_spec_in_use_and_their_own_edges():
    # the defaults, the README's and the benchmark configs' specs, and each bound itself
    for spec in ("qe", "kr", "qe+kr", "kr=20,depth=100,lam=0.5", "qe=5,alpha=3,kr=20,depth=300",
                 "qe=3,alpha=2,depth=100", "kr=5,depth=20", "qe=50,alpha=20,kr=50,k2=20,lam=1,depth=500",
                 "qe=1,kr=1,k2=1,alpha=0,lam=0,depth=2", "qe=0"):
        opts = parse_rerank(spec)
        assert parse_rerank(opts.spec) == opts
    assert LIMITS["depth"][1] >= RerankOptions().depth


def test_options_made_in_code_obey_the_same_bounds():
    with pytest.raises(ConfigError, match="depth must be a whole number from 2 to 500"):
        RerankOptions(kreciprocal=True, depth=20_000_000)
    with pytest.raises(ConfigError, match="k2 must be a whole number from 1 to 20"):
        RerankOptions(kreciprocal=True, k2=30)


# -- the edges ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,message", PAST)
def test_the_api_answers_400_naming_the_bound(client, spec, message):
    r = api_search(client, photo(1), rerank=spec)
    assert r.status_code == 400, r.get_json()
    assert message in r.get_json()["error"]["message"]


def test_the_cli_says_a_usage_error_naming_the_bound(tmp_path):
    image = tmp_path / "q.jpg"
    image.write_bytes(photo(1))
    res = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "search", str(image),
                                   "--rerank", "kr,k2=30,depth=3000"])
    assert res.exit_code == 2 and "k2 must be a whole number from 1 to 20" in res.output, res.output


def test_benchmark_configs_and_a_builds_settings_obey_the_bounds(tmp_path):
    with pytest.raises(ConfigError, match="depth must be a whole number from 2 to 500"):
        parse_config("rerank=depth=501", BenchConfig(model="efficientnet-lite0"))
    toml = tmp_path / "c.toml"
    toml.write_text('[[config]]\nname = "big"\nrerank = "kr,k2=30"\n')
    with pytest.raises(ConfigError, match="k2 must be a whole number from 1 to 20"):
        parse_config(str(toml), BenchConfig(model="efficientnet-lite0"))
    from shopsearch.app import build_calibrator, search_service_over

    settings = Settings(data_dir=tmp_path / "data", rerank="qe=100000000")
    with pytest.raises(ConfigError, match="qe must be a whole number from 0 to 50"):
        build_calibrator(settings, IndexStore(tmp_path / "index"), None, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="qe must be a whole number from 0 to 50"):
        search_service_over(None, None, None, None, rerank=settings.rerank)  # type: ignore[arg-type]


# -- no search asks for more than the index holds ----------------------------------------------
class _Spy:
    """A VectorIndex that records the k of each search."""

    def __init__(self, index: VectorIndex) -> None:
        self.index, self.asked = index, []

    def __len__(self) -> int:
        return len(self.index)

    def reconstruct(self, i: int) -> np.ndarray:
        return self.index.reconstruct(i)

    def search(self, q, k, allowed=None):
        self.asked.append(k)
        return self.index.search(q, k, allowed=allowed)


def test_reranking_asks_for_no_more_than_the_index_or_the_filter_holds():
    rng = np.random.default_rng(0)
    x = _unit(rng.normal(size=(40, 8)))
    vi = VectorIndex(8, "flat", expected_size=40)
    vi.add(np.arange(40, dtype=np.int64) + 100, x)
    spy = _Spy(vi)
    wrapped = RerankingIndex(spy, parse_rerank("qe+kr,depth=500"))
    allowed = np.arange(100, 107, dtype=np.int64)
    s, ids = wrapped.search(x[0][None], 10**9, allowed=allowed)  # a filter of 7 ids
    assert spy.asked == [7] and ids.shape == s.shape == (1, 7)
    assert sorted(ids[0].tolist()) == allowed.tolist()
    s, ids = wrapped.search(x[0][None], 10**9)  # no filter: the 40 the index holds
    assert spy.asked[-1] == 40 and ids.shape == (1, 40) and len(set(ids[0].tolist())) == 40


def test_a_filtered_reranked_search_never_asks_past_the_index(client, monkeypatch):
    """The probe's `rerank=kr,depth=...&category=Fruit`: the deepest allowed depth on a 6-image
    index, filtered, asks the index for at most its 6 vectors."""
    asked: list[tuple[int, bool]] = []
    size: list[int] = []
    real = VectorIndex.search

    def spy(self, queries, k, allowed=None, selector=None):
        asked.append((k, allowed is not None))
        size.append(len(self))
        return real(self, queries, k, allowed=allowed, selector=selector)

    monkeypatch.setattr(VectorIndex, "search", spy)
    for params, filtered in (({"rerank": "kr,depth=500", "category": "Fruit"}, True),
                             ({"rerank": "kr,depth=500", "min_price": "0"}, True),
                             ({"rerank": "qe+kr,depth=500"}, False)):
        asked.clear()
        size.clear()
        r = api_search(client, photo(2), **params)
        assert r.status_code == 200, r.get_json()
        assert asked and all(k <= n for (k, _), n in zip(asked, size)), (params, asked, size)
        assert any(f for _, f in asked) == filtered  # the filter searched among allowed ids
