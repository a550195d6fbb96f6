"""Tiny's date-times are São Paulo wall clock: one sent with an offset is converted, not cut."""

from __future__ import annotations

import datetime as dt

import pytest

from asyncsync.records import parse_date, parse_datetime, parse_detail

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


def test_a_date_sent_as_a_date_time_is_its_day_on_sao_paulos_clock() -> None:
    """``data`` (emission) read the first ten characters: with an offset, a day other
    than the one ``dataPrevista`` and ``dataConclusao`` are read on; trailing garbage
    passed unseen."""
    assert parse_date("2024-03-01", "data") == dt.date(2024, 3, 1)
    assert parse_date("2024-03-01 23:59:59", "data") == dt.date(2024, 3, 1)
    assert parse_date("2024-03-01T01:00:00Z", "data") == dt.date(2024, 2, 29)
    assert parse_date("2024-03-01T01:00:00-03:00", "data") == dt.date(2024, 3, 1)
    for bad in ("2024-03-01garbage", "2024-03-01T25:00:00"):
        with pytest.raises(ValueError, match="unparseable"):
            parse_date(bad, "data")


def test_the_year_1_is_no_date_as_the_year_9999_is() -> None:
    """``0001-01-01`` (.NET's and Java's "no date") became -infinity in every date column
    (asyncpg maps date.min to it), a conclusion from the API in ``ordens_finalizadas``,
    and ``0001-01-01T00:00:00Z`` a failed record (before the year 1 in São Paulo)."""
    for text in ("0001-01-01", "0001-01-01 00:00:00", "0001-01-01T00:00:00Z",
                 "9999-12-31", "9999-12-31 23:59:59"):  # fmt: skip
        assert parse_date(text, "data") is None, text
        assert parse_datetime(text, "dataConclusao") is None, text
    detail = parse_detail(
        {"id": 7, "situacao": "3", "dataConclusao": "0001-01-01 00:00:00"}, 7, NOW
    )
    assert detail.data_conclusao is None
    assert parse_date("0002-01-01", "data") == dt.date(2, 1, 1)  # a date, however odd


def test_a_failed_records_error_is_one_line_not_the_whole_value() -> None:
    """A 100,000-character date went whole into ``erro`` beside ``dados_api`` (sweep L)."""
    from asyncsync.errors import RecordError
    from asyncsync.records import ERROR_CHARS

    with pytest.raises(RecordError) as caught:
        parse_detail({"id": 7, "situacao": "3", "dataConclusao": "9" * 100_000}, 7, NOW)
    said = str(caught.value)
    assert said.startswith("dataConclusao: unparseable date-time '999")
    assert len(said) < ERROR_CHARS + 80 and "100,0" in said, said
    assert "9" * 100_000 in str(caught.value.raw)  # whole where it is kept
