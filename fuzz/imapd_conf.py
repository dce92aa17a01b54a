"""Fuzz target: the imapd.conf parser (pop3d/config/imapd.py) and the pure settings it
feeds (SASL mechanism lists, identity rules, Argon2 parameters).

Invariant: any text either parses or raises ConfigError, never another exception; a
parsed config answers every option of pop3d.config.options with a value of the option's
kind, for no service and for a service prefix. ``@include`` may only reach files in a
private sandbox directory (any other path is redirected to a missing file there), so the
fuzzer cannot make the harness read /dev/zero or the host's files.

Input: the config text (UTF-8, else Latin-1).

    python fuzz/imapd_conf.py [libFuzzer flags] [corpus dir ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repo root, not fuzz/

import atheris

with atheris.instrument_imports(include=["pop3d"]):
    from fuzz.support import check
    from pop3d.auth import from_config
    from pop3d.config import imapd
    from pop3d.config.options import OPTIONS, Kind
    from pop3d.sasl import registry

SANDBOX = Path(tempfile.mkdtemp(prefix="pop3d-fuzz-imapd-"))
(SANDBOX / "inc.conf").write_text("allowplaintext: yes\npop3s_sasl_mech_list: PLAIN bogus\n")
(SANDBOX / "loop.conf").write_text("@include: loop.conf\n")
(SANDBOX / "latin1.conf").write_bytes(b"servername: caf\xe9\n")
_parse_file = imapd._Parser.parse_file


def _sandboxed(
    self: imapd._Parser, path: Path, depth: int = 0, origin: tuple[str, int] | None = None
) -> None:
    if not os.path.normpath(path).startswith(f"{SANDBOX}{os.sep}"):
        path = SANDBOX / "missing.conf"
    _parse_file(self, path, depth, origin)


imapd._Parser.parse_file = _sandboxed  # type: ignore[method-assign]

KINDS = {
    Kind.SWITCH: (bool,),
    Kind.INT: (int,),
    Kind.DURATION: (int,),
    Kind.STRING: (str,),
    Kind.ENUM: (str,),
}


def test_one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        config = imapd.from_text(text, str(SANDBOX / "imapd.conf"))
    except imapd.ConfigError as error:
        check(error.problems, "ConfigError without a problem")
        str(error)
        return
    for service in (None, "pop3s"):
        for name, option in OPTIONS.items():
            value = config.get(name, service)
            check(
                value is None or isinstance(value, KINDS[option.kind]),
                f"{name} = {value!r} is not {option.kind}",
            )
            config.where(name, service)
        registry.enabled(config.string("sasl_mech_list", service))
        from_config.identity_rules(config, service)
        from_config.argon2_parameters(config, service)
    registry.config_problems(config)
    for problem in config.problems:
        str(problem)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
