"""The log line's formatter: LOG_FORMAT put together directly gives what logging's own
formatting of LOG_FORMAT gives, for any record; a traceback still follows its line."""

from __future__ import annotations

import logging
import sys

from hypothesis import given
from hypothesis import strategies as st

from pop3d.cli.common import LOG_FORMAT, _Formatter


def _generic() -> _Formatter:
    formatter = _Formatter(LOG_FORMAT)
    formatter._direct = False  # logging's own path, as for any other format
    return formatter


@given(
    name=st.sampled_from(["pop3d", "pop3d.audit", "pop3d.master", "root"]),
    level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
    message=st.text(max_size=200),
    args=st.lists(st.one_of(st.text(max_size=40), st.integers()), max_size=3),
    created=st.floats(min_value=0, max_value=4e9),
)
def test_the_direct_line_is_logging_s_own(
    name: str, level: int, message: str, args: list[object], created: float
) -> None:
    template = message.replace("%", "%%") + " %s" * len(args)
    record = logging.LogRecord(name, level, __file__, 1, template, tuple(args), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    direct = _Formatter(LOG_FORMAT)
    assert direct._direct
    assert direct.format(record) == _generic().format(record)


def _fail() -> None:
    raise ValueError("boom")


def test_a_traceback_follows_its_line() -> None:
    try:
        _fail()
    except ValueError:
        record = logging.LogRecord("pop3d", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    text = _Formatter(LOG_FORMAT).format(record)
    first, _, rest = text.partition("\n")
    assert first.endswith(f" pop3d[{record.process}]: ERROR failed")
    assert "Traceback" in rest and "ValueError: boom" in rest
