"""Fuzz target: the cyrus.conf parser (pop3d/config/cyrus.py).

Invariant: any text either parses (as ``load`` does: problems of severity "error" raise
ConfigError) or raises ConfigError, never another exception; every service parsed has a
name, a pop3d command line, a listen address and a non-negative prefork.

Input: the config text (UTF-8, else Latin-1).

    python fuzz/cyrus_conf.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import check
    from pop3d.config import cyrus
    from pop3d.config.imapd import ConfigError


def parse(text: str) -> cyrus.MasterConfig:
    """``cyrus.load`` without the file."""
    config = cyrus.parse_text(text, "cyrus.conf")
    if any(problem.severity == "error" for problem in config.problems):
        raise ConfigError(config.problems)
    return config


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        config = parse(text)
    except ConfigError as error:
        check(error.problems, "ConfigError without a problem")
        str(error)
        return
    for service in config.services:
        check(service.name, "service without a name")
        check(cyrus.is_pop3d_command(service.argv), f"{service.argv!r} is not pop3d")
        check(service.prefork >= 0, f"prefork {service.prefork}")
        str(service.listen)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
