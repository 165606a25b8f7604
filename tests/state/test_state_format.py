"""The bytes of user and article states are pinned: a refactoring of the codec must not change them.

The digests were computed by the code before the codec's groups were named (commit cd789e1), the
user format 3 digest by the code that added the per-brand and per-category impression and click
counts: a change here is a format change, which needs a new format byte (``USER_FORMAT``, article
``_FORMAT``). Format 2 user bytes (pinned by the old digest) still decode.
A user state's segment (assigned by the worker) is an optional tail that states without one lack.
"""

from __future__ import annotations

import hashlib
import random

from stream.state import ArticleState, UserState, new_article_state, new_user_state, update_article, update_user
from stream.state.synthetic import generate_events
from stream.state.user_codec import USER_FORMAT, encode_user

USER_DIGEST = "d398fd40c168b6d953e90ec08ee4138d7e85c919899590220971e94a8f976077"
#: format 2 (before the per-brand and per-category counts), computed by the code of commit cd789e1
USER_FORMAT2_DIGEST = "aed2e9feb0bef83dc3bf62fbc12db8ed148dcf6e009762a483763a842fbb85c7"
ARTICLE_DIGEST = "4277c09baa2c7e7001bbce8134125e541bee75f54268c74ec372c1c6eaa67288"


def _states(fmt: int = USER_FORMAT) -> tuple[list[UserState], list[ArticleState], list[bytes]]:
    """States of a seeded synthetic history, shuffled within 10 minutes, with 30 duplicates; and the
    bytes (in format ``fmt``) of every fifth user state on the way (open sessions, pending buffers)."""
    rng = random.Random(7)
    events = generate_events(n_users=30, days=10, seed=7)
    events.sort(key=lambda e: e["event_time"] + rng.randint(-600_000, 600_000))
    events += rng.sample(events, 30)
    users: dict[str, UserState] = {}
    articles: dict[str, ArticleState] = {}
    midway = []
    for i, event in enumerate(events):
        st = update_user(users.setdefault(event["user_id"], new_user_state()), event)
        if event.get("article_id"):
            update_article(articles.setdefault(event["article_id"], new_article_state()), event)
        if i % 5 == 0:
            midway.append(encode_user(st, fmt))
    return [users[k] for k in sorted(users)], [articles[k] for k in sorted(articles)], midway


def test_state_bytes_are_unchanged() -> None:
    users, articles, midway = _states()
    user_bytes = [st.to_bytes() for st in users] + midway
    article_bytes = [st.to_bytes() for st in articles]
    assert hashlib.sha256(b"".join(user_bytes)).hexdigest() == USER_DIGEST
    assert hashlib.sha256(b"".join(article_bytes)).hexdigest() == ARTICLE_DIGEST
    # and they decode to states that give them back
    assert all(UserState.from_bytes(b).to_bytes() == b for b in user_bytes)
    assert all(ArticleState.from_bytes(b).to_bytes() == b for b in article_bytes)


def test_format_2_bytes_still_decode() -> None:
    """Bytes written before the per-brand and per-category counts existed decode to the same state with
    those counts empty: the old layout written again gives the old bytes, the new one differs only there."""
    users, _, midway = _states(fmt=2)
    old = [encode_user(st, 2) for st in users] + midway
    assert hashlib.sha256(b"".join(old)).hexdigest() == USER_FORMAT2_DIGEST
    for b in old:
        st = UserState.from_bytes(b)
        assert (st.i_brand.c, st.c_brand.c, st.i_cat.c, st.c_cat.c) == ({}, {}, {}, {})
        assert encode_user(st, 2) == b and st.to_bytes()[0] == USER_FORMAT
    full = users[0]
    assert full.i_brand.c and full.i_cat.c  # the history has impressions with a brand and a category
    back = UserState.from_bytes(encode_user(full, 2))
    full.i_brand, full.c_brand, full.i_cat, full.c_cat = back.i_brand, back.c_brand, back.i_cat, back.c_cat
    assert back.to_bytes() == full.to_bytes()


def test_a_segment_is_an_optional_tail_of_the_format() -> None:
    """A state the worker assigned a segment carries it in three more wide values; bytes without one
    are those of the pinned digest above, so states written before segments existed decode as they
    were (no segment) and give the same bytes back."""
    users, _, midway = _states()
    for st in users[:10]:
        before = st.to_bytes()
        assert UserState.from_bytes(before).segment is None
        st.segment = (3, 12, st.max_t)
        after = st.to_bytes()
        assert after != before and after[0] == before[0]  # same format byte
        back = UserState.from_bytes(after)
        assert back.segment == (3, 12, st.max_t) and back.to_bytes() == after
        back.segment = None
        assert back.to_bytes() == before  # everything else unchanged
    assert all(UserState.from_bytes(b).segment is None for b in midway)
    # an empty state has nothing to carry a segment (a segment follows an applied session_end)
    assert UserState.from_bytes(new_user_state().to_bytes()).segment is None
