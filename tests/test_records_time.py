"""Tiny's date-times are São Paulo wall clock: one sent with an offset is converted, not cut."""

from __future__ import annotations

import datetime as dt

from asyncsync.records import parse_datetime, parse_detail

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_date_time_with_an_offset_is_read_on_sao_paulos_clock() -> None:
    assert parse_datetime("2024-01-10 13:00:00", "x") == dt.datetime(2024, 1, 10, 13, 0)
    assert parse_datetime("2024-01-10T13:00:00-03:00", "x") == dt.datetime(2024, 1, 10, 13, 0)
    assert parse_datetime("2024-01-10T16:00:00Z", "x") == dt.datetime(2024, 1, 10, 13, 0)
    assert parse_datetime("2024-01-10T16:00:00+00:00", "x") == dt.datetime(2024, 1, 10, 13, 0)
    # Brazil kept summer time until 2019: -02:00 then.
    assert parse_datetime("2018-12-10T14:00:00Z", "x") == dt.datetime(2018, 12, 10, 12, 0)


def test_a_detail_whose_conclusion_has_an_offset_keeps_the_instant() -> None:
    detail = parse_detail(
        {"id": 7, "situacao": "3", "dataConclusao": "2024-01-10T16:00:00Z"}, 7, NOW
    )
    assert detail.data_conclusao == dt.datetime(2024, 1, 10, 13, 0)
