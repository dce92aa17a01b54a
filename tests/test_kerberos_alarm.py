"""kerberos/alarm.py: an error line a client can cause at will (a ticket naming a key the
keytab never had) is logged once a minute at most, the next saying how many were not."""

from __future__ import annotations

import logging

import pytest

from pop3d.kerberos.alarm import Alarm


def test_one_line_a_minute_and_the_count_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    alarm = Alarm(logging.getLogger("pop3d.test-alarm"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="pop3d.test-alarm"):
        alarm("keytab lacks kvno %d", 99)
        for _ in range(500):  # a client's flood of forged tickets
            now[0] += 0.1
            alarm("keytab lacks kvno %d", 99)
        now[0] += 60.0
        alarm("keytab lacks kvno %d", 3)
    assert [r.getMessage() for r in caplog.records] == [
        "keytab lacks kvno 99",
        "keytab lacks kvno 3 (500 more in the last 60 s not logged)",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records)
