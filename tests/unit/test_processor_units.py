"""The processor's units on their own: parsing with dead letters, the state caches, the bandit."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stream.events.schema import validate
from stream.state import UserState, new_article_state, new_user_state, update_article
from stream.worker.ads import Ads, merged_counts
from stream.worker.caches import EMPTY_ARTICLE, ArticleStates, UserStates
from stream.worker.delivery import pack_user, unpack_user
from stream.worker.parsing import Record, parse_records
from stream.worker.stores import StoreUnavailable

EVENT = {
    "schema_version": 1,
    "event_id": "s1-0",
    "event_type": "session_start",
    "user_id": "u1",
    "session_id": "s1",
    "event_time": 1_736_124_396_111,
    "device": {"type": "desktop", "os": "Windows", "browser": "Edge"},
    "geo": {"country": "GB", "city": "London", "timezone": "Europe/London"},
}


def rec(value: bytes | None, offset: int, key: bytes | None = b"u1") -> Record:
    return Record(key, value, "in", 3, offset, 1_000)


# --- parsing ----------------------------------------------------------------------------------


def test_valid_records_become_events_in_order_and_the_others_dead_letters() -> None:
    good = orjson.dumps(EVENT)
    records = [rec(good, 0), rec(b"{not json", 1), rec(None, 2), rec(b"x" * 600, 3), rec(good, 4)]
    parsed = parse_records(records, 512, received_at_ms=42)
    assert [(r.offset, e["event_id"]) for r, e in parsed.events] == [(0, "s1-0"), (4, "s1-0")]
    assert parsed.invalid == {"malformed": 2, "oversized": 1}
    assert [env["source_offset"] for _, env in parsed.dead_letters] == [1, 2, 3]
    assert [env["error_kind"] for _, env in parsed.dead_letters] == ["malformed", "malformed", "oversized"]
    for key, env in parsed.dead_letters:
        validate("dead_letter", env)
        assert key == b"u1"
        assert (env["source_topic"], env["source_partition"], env["received_at"]) == ("in", 3, 42)


# --- user states ------------------------------------------------------------------------------


class CountingStore(dict[str, bytes]):
    """A dict that counts reads and writes, and fails when told to."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.reads = 0
        self.writes = 0
        self.fail = False

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        if self.fail:
            raise OSError("disk gone")
        return super().get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.writes += 1
        if self.fail:
            raise OSError("disk gone")
        super().__setitem__(key, value)


def _state(n: int) -> UserState:
    state = new_user_state()
    state.max_t = 1_000  # a state that has seen events: the codec keeps its fields
    state.late = n  # tells states apart
    return state


def test_a_user_is_read_once_and_written_once_per_batch() -> None:
    store = CountingStore({"u1": pack_user(7, _state(3))})
    users = UserStates()
    batch = users.begin(0, store)
    offset, state = batch.load("u1")
    assert offset == 7 and state.late == 3
    batch.applied("u1", 8, state)
    batch.applied("u1", 9, state)
    assert batch.load("u1")[0] == 9
    batch.write()
    assert (store.reads, store.writes) == (1, 1)
    assert unpack_user(store["u1"])[0] == 9
    # the next batch reads the cache, not the store
    assert users.begin(0, store).load("u1")[0] == 9 and store.reads == 1


def test_an_undone_batch_reads_its_users_again_and_others_stay_cached() -> None:
    store = CountingStore({"u1": pack_user(7, _state(3)), "u2": pack_user(1, _state(1))})
    users = UserStates()
    users.begin(0, store).load("u2")
    batch = users.begin(0, store)
    _, state = batch.load("u1")
    state.late = 99  # changed in place, never written
    batch.applied("u1", 8, state)
    batch.undo()
    again = users.begin(0, store)
    assert again.load("u1")[1].late == 3
    assert store.reads == 3  # u2 once, u1 twice
    again.load("u2")
    assert store.reads == 3


def test_the_cache_keeps_the_most_recently_used_users_and_partitions_are_forgotten() -> None:
    store = CountingStore({u: pack_user(0, _state(0)) for u in ("a", "b", "c")})
    users = UserStates(max_cached=2)
    batch = users.begin(0, store)
    for uid in ("a", "b", "a", "c"):
        batch.load(uid)
    batch.trim()
    assert list(batch.users) == ["a", "c"]
    users.forget({0})
    users.begin(0, store).load("a")
    assert store.reads == 4


def test_a_user_store_that_fails_is_the_store_s_fault() -> None:
    store = CountingStore()
    store.fail = True
    batch = UserStates().begin(0, store)
    with pytest.raises(StoreUnavailable, match="cannot read the worker's tables: OSError: disk gone"):
        batch.load("u1")
    batch.dirty["u1"] = 1
    batch.users["u1"] = (1, new_user_state())
    with pytest.raises(StoreUnavailable, match="cannot write the worker's tables: OSError: disk gone"):
        batch.write()


# --- article states ---------------------------------------------------------------------------


def test_owned_articles_are_read_directly_and_others_decoded_once_per_value() -> None:
    articles = ArticleStates()
    mine = new_article_state()
    articles.owned["a1"] = mine
    table = CountingStore({"a2": new_article_state().to_bytes()})
    assert articles.get(table, "a1") is mine and table.reads == 0
    first = articles.get(table, "a2")
    assert articles.get(table, "a2") is first  # same bytes: no second decode
    table["a2"] = bytes(bytearray(table["a2"]))  # equal bytes, another object
    assert articles.get(table, "a2") is first
    clicked = update_article(new_article_state(), {"event_type": "article_click", "event_time": T0})
    table["a2"] = clicked.to_bytes()  # the article agent folded a click
    changed = articles.get(table, "a2")
    assert changed is not first and changed.to_bytes() == table["a2"]
    assert articles.get(table, "missing") is EMPTY_ARTICLE


# --- the bandit -------------------------------------------------------------------------------

T0 = 1_736_124_396_000


def ad(kind: str, rid: str, t: int, placement: str = "top", user: str = "u1", device: str = "mobile") -> dict[str, Any]:
    return {
        "event_type": kind,
        "user_id": user,
        "request_id": rid,
        "event_time": t,
        "placement": placement,
        "event_id": f"{rid}-{kind}",
        "device": {"type": device},
    }


def test_impressions_are_trials_and_a_click_in_the_window_a_success() -> None:
    ads = Ads(("top", "side"), join_window_ms=1_000)
    pending: dict[str, bytes] = {}
    bandit: dict[str, bytes] = {}
    batch = ads.begin(pending, bandit)
    batch.event(ad("ad_impression", "r1", T0), "ad_impression", 2)
    batch.event(ad("ad_impression", "r1", T0), "ad_impression", 2)  # delivered twice: one trial
    batch.event(ad("ad_impression", "r2", T0, "side"), "ad_impression", 2)
    batch.event(ad("ad_impression", "r3", T0, "nowhere"), "ad_impression", 2)  # not a placement of ours
    batch.event(ad("ad_click", "r1", T0 + 1_000), "ad_click", 2)  # at the window's end
    batch.event(ad("ad_click", "r1", T0 + 1_000), "ad_click", 2)  # clicked already
    batch.event(ad("ad_click", "r2", T0 + 1_001), "ad_click", 2)  # past the window
    batch.event(ad("ad_click", "r9", T0), "ad_click", 2)  # no impression
    batch.write()
    assert {k: orjson.loads(v) for k, v in bandit.items()} == {"2": {"mobile|top": [1, 1], "mobile|side": [1, 0]}}
    assert orjson.loads(pending["u1"]) == {"r1": ["top", "mobile", T0, 1], "r2": ["side", "mobile", T0, 0]}
    assert ads.own == {"2|mobile|top": [1, 1], "2|mobile|side": [1, 0]}


def test_an_undone_batch_leaves_the_counts_of_before() -> None:
    ads = Ads(("top",))
    bandit = {"1|mobile|top": orjson.dumps([5, 2])}
    first = ads.begin({}, bandit)
    first.event(ad("ad_impression", "r1", T0), "ad_impression", 1)
    first.write()
    assert ads.own == {"1|mobile|top": [6, 2]}
    failed = ads.begin({}, bandit)
    failed.event(ad("ad_impression", "r2", T0, user="u2"), "ad_impression", 1)
    failed.event(ad("ad_impression", "r3", T0, device="desktop"), "ad_impression", 1)
    failed.undo()
    assert ads.own == {"1|mobile|top": [6, 2]}
    assert orjson.loads(bandit["1"]) == {"mobile|top": [6, 2]}
    # the table's old per-key record is left as it was, and no longer read: the partition's record is
    assert orjson.loads(bandit["1|mobile|top"]) == [5, 2]
    assert merged_counts(bandit) == {"mobile": {"top": (6, 2)}}


def test_one_record_per_partition_and_batch_holds_all_of_its_counts() -> None:
    ads = Ads(("top", "side"))
    bandit = {"3": orjson.dumps({"mobile|top": [7, 1], "tablet|side": [2, 2]}), "0": orjson.dumps({"all|top": [4, 0]})}
    writes: list[str] = []

    class Recording(dict[str, bytes]):
        def __setitem__(self, key: str, value: bytes) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    table = Recording(bandit)
    batch = ads.begin({}, table)
    for i in range(20):
        event = ad("ad_impression", f"r{i}", T0 + i, "side" if i % 2 else "top", device="desktop")
        batch.event(event, "ad_impression", 3)
    batch.event(ad("ad_impression", "m1", T0, "top", user="u2"), "ad_impression", 3)
    batch.write()
    assert writes == ["3"]
    assert orjson.loads(table["3"]) == {
        "desktop|side": [10, 0],
        "desktop|top": [10, 0],
        "mobile|top": [8, 1],
        "tablet|side": [2, 2],
    }
    assert orjson.loads(table["0"]) == {"all|top": [4, 0]}  # another partition's record: left alone
    assert merged_counts(table) == {
        "desktop": {"side": (10, 0), "top": (10, 0)},
        "mobile": {"top": (8, 1)},
        "tablet": {"side": (2, 2)},
        "all": {"top": (4, 0)},
    }


def test_the_posterior_takes_this_worker_s_counts_over_the_table_s() -> None:
    ads = Ads(("top", "side"))
    ads.own["0|mobile|top"] = [10, 4]
    table = {
        b"0|mobile|top": orjson.dumps([8, 3]),
        b"1|mobile|top": orjson.dumps([1, 1]),
        b"1|all|side": orjson.dumps([2, 0]),
    }
    assert ads.posterior_snapshot(table) == {"mobile": {"top": (11, 5)}, "all": {"side": (2, 0)}}
    assert merged_counts(table) == {"mobile": {"top": (9, 4)}, "all": {"side": (2, 0)}}
    ads.forget({0})
    assert ads.own == {}


def test_decisions_are_taken_against_the_counts_of_the_batch_s_first_request() -> None:
    ads = Ads(("top", "side"), seed=4)
    bandit: dict[str, bytes] = {}
    batch = ads.begin({}, bandit)
    batch.request(ad("ad_request", "q1", T0))
    bandit["0|mobile|top"] = orjson.dumps([1000, 900])  # written after the first request: not seen
    batch.request(ad("ad_request", "q2", T0, device="tablet"))
    chosen: dict[tuple[str, str], int] = {}
    decisions = batch.decide(T0 + 5, chosen)
    assert [(d["request_id"], d["context"], d["decided_at"]) for d in decisions] == [
        ("q1", "mobile", T0 + 5),
        ("q2", "tablet", T0 + 5),
    ]
    assert [d["arm_means"] for d in decisions] == [{"top": 0.5, "side": 0.5}] * 2  # Beta(1, 1) priors
    assert sum(chosen.values()) == 2
    for d in decisions:
        validate("bandit_decision", d)
    # a decision depends on (seed, request_id) and the counts only: the same on another worker
    again = Ads(("top", "side"), seed=4).begin({}, {})
    again.request(ad("ad_request", "q2", T0, device="tablet"))
    assert again.decide(T0 + 5, {})[0]["placement"] == decisions[1]["placement"]
    assert ads.begin({}, {}).decide(T0, chosen) == []
