from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamq import codec, keys
from streamq.config import parse_duration
from streamq.errors import ConfigError, PayloadError

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(payload=json_values, attempt=st.integers(1, 1000), key=st.none() | st.text(min_size=1))
def test_envelope_round_trips_any_json_payload(payload: Any, attempt: int, key: str | None) -> None:
    env = codec.Envelope(id="s:1", payload=payload, enqueued_at_ms=1, attempt=attempt, key=key)
    decoded = codec.decode_fields([codec.ENTRY_FIELD, codec.encode(env)])
    assert decoded == env


def test_entry_with_foreign_fields_is_rejected() -> None:
    with pytest.raises(codec.UnknownEntry, match="foreign entry"):
        codec.decode_fields([b"text", b"hello"])
    with pytest.raises(codec.UnknownEntry, match="foreign entry"):
        codec.decode_fields({b"j": b"{}", b"extra": b"1"})


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"not json", b'{"payload": 1}', b"[1,2]"])
def test_undecodable_entry_is_rejected(raw: bytes) -> None:
    with pytest.raises(codec.UnknownEntry, match="undecodable"):
        codec.decode_fields([codec.ENTRY_FIELD, raw])


def test_entry_from_a_newer_format_is_rejected() -> None:
    raw = b'{"id":"s:1","payload":1,"t":1,"v":99}'
    with pytest.raises(codec.UnknownEntry, match="newer"):
        codec.decode_fields([codec.ENTRY_FIELD, raw])


def test_unknown_envelope_fields_are_ignored_for_rolling_upgrades() -> None:
    raw = b'{"id":"s:1","payload":{"a":1},"t":5,"future":"x"}'
    assert codec.decode_fields([codec.ENTRY_FIELD, raw]).payload == {"a": 1}


def test_unencodable_payload_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        codec.encode(codec.Envelope(id="s:1", payload=object(), enqueued_at_ms=1))


def test_bad_json_is_a_one_line_payload_error() -> None:
    with pytest.raises(PayloadError, match="not valid JSON") as info:
        codec.parse_json("{oops")
    assert "\n" not in str(info.value)


def test_job_ids_name_their_stream_and_are_unique() -> None:
    ids = {codec.new_job_id("instagram") for _ in range(10_000)}
    assert len(ids) == 10_000
    assert {keys.stream_of_job(i) for i in ids} == {"instagram"}


@pytest.mark.parametrize("name", ["", "a:b", "{x}", "a b", "-x", "x" * 65])
def test_bad_stream_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid stream name"):
        keys.check_stream_name(name)


def test_keys_share_the_stream_hash_tag() -> None:
    all_keys = [*keys.lanes("instagram"), keys.dead("instagram"), keys.dedup("instagram")]
    assert all("{instagram}" in k for k in all_keys)
    assert keys.lanes("x")[0].endswith(":lane:high")


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("90s", 90), ("10m", 600), ("6h", 21600), ("2", 2)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten", "5 weeks", "-3s", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_a_full_config_file_parses_with_durations_and_backoff() -> None:
    import tomllib

    from streamq.config import Backoff, parse_config

    config = parse_config(
        tomllib.loads(
            """
            redis_url = "redis://127.0.0.1:6379/0"
            [streams.instagram]
            handler = "mypkg.handlers:publish"
            concurrency = 16
            visibility_timeout = "90s"
            max_deliveries = 3
            max_attempts = 7
            backoff = { base = "500ms", factor = 3, max = "10m", jitter = 0.1 }
            expire_after = "6h"
            job_timeout = "2m"
            retention = "1d"
            """
        )
    )
    stream = config.stream("instagram")
    assert (stream.concurrency, stream.visibility_timeout, stream.max_deliveries) == (16, 90, 3)
    assert stream.backoff == Backoff(base=0.5, factor=3, max=600, jitter=0.1)
    assert (stream.max_attempts, stream.expire_after, stream.job_timeout) == (7, 21600, 120)
    assert stream.retention == 86400
    assert config.stream("linkedin").max_attempts == 5  # defaults for streams not listed


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[streams.x]\nbackoff = { jitter = 2 }", "jitter is a fraction"),
        ("[streams.x]\nmax_attempts = 0", "max_attempts must be at least 1"),
        ("[streams.x]\nvisibility_timeout = [1]", "must be a duration"),
        ("[streams.x]\nunknown = 1", "unknown"),
        ("[streams.'a:b']\n", "invalid stream name"),
    ],
)
def test_bad_config_values_are_config_errors(toml: str, message: str) -> None:
    import tomllib

    from streamq.config import parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(toml))


def test_job_ids_of_one_millisecond_sort_in_the_order_they_were_made() -> None:
    # A sorted set orders equal scores by member: ids made in one millisecond (a bulk enqueue)
    # must fall back to the order they were made in, not to their random part.
    made = [codec.new_job_id("instagram", 1_700_000_000_000) for _ in range(5000)]
    assert sorted(made) == made
    later = codec.new_job_id("instagram", 1_700_000_000_001)
    assert later > made[-1]
    # Ids written by the previous version (<ms hex 11>-<random hex 12>) sort by time alike.
    assert f"instagram:{1_699_999_999_999:011x}-ffffffffffff" < made[0]


@given(
    payload=json_values,
    attempt=st.integers(1, 3),
    first_run=st.booleans(),
    id_tail=st.sampled_from(["", "x", "-1", ":zz-1"]),
)
def test_a_done_records_envelope_reads_back_as_its_entrys(
    payload: Any, attempt: int, first_run: bool, id_tail: str
) -> None:
    """What the worker sends for a done record (codec.stored_envelope) is read back by every
    reader (codec.entry_envelope) as the entry's envelope exactly, whatever the id's shape."""
    made = codec.new_job_id("s")
    job_id = made + id_tail
    env = codec.Envelope(
        id=job_id, payload=payload, enqueued_at_ms=codec._created_ms(made),
        attempt=attempt, first_run=first_run,
    )  # fmt: skip
    raw = codec.encode(env)
    stored = codec.stored_envelope(raw, job_id, env.enqueued_at_ms)
    assert codec.entry_envelope(stored, job_id) == raw
    assert job_id.encode() not in stored
    if first_run and attempt == 1 and not id_tail:
        # A new job's first entry: the payload alone, as a scheduled record keeps it.
        assert stored == b"~" + msgspec.json.encode(payload)


def test_a_done_records_envelope_of_another_shape_is_kept_whole() -> None:
    raw = b'{"payload":1,"id":"s:1","t":5}'  # written by hand, fields in another order
    assert codec.stored_envelope(raw, "s:1", 5) == raw
    assert codec.stored_envelope(b"", "s:1", 5) == b""


@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=8,
    ),
    key=st.none() | st.text(min_size=1, max_size=20),
    account=st.none() | st.text(min_size=1, max_size=20),
)
def test_a_new_jobs_record_form_gives_back_its_envelope(
    payload: Any, key: str | None, account: str | None
) -> None:
    """scheduled_form keeps a new job's envelope without its id, enqueue time, key, account
    and first-run flag, and entry_envelope, given the record's key and account, gives back
    the same envelope; a key or account the Lua side would not escape as JSON does (a
    control character: the API refuses them, streamq.keys.check_key) leaves it whole."""
    job_id = "s:0019ae00000-000000aabbccddeeff"
    envelope = codec.Envelope(
        id=job_id, enqueued_at_ms=0x19AE00000, payload=payload, key=key, account=account,
        run_at_ms=0x19AE00000 + 5, first_run=True,
    )  # fmt: skip
    encoded = codec.encode(envelope)
    stored = codec.scheduled_form(encoded, envelope)
    # JSON escapes control characters (and '"' and '\\', which Lua escapes too).
    plain = all(v is None or min(map(ord, v)) >= 0x20 for v in (key, account))
    assert stored.startswith(b"^") == plain
    assert codec.record_envelope(stored, job_id, key, account) == envelope
