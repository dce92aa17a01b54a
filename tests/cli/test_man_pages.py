"""The manual pages (pop3d/man/): they render without a warning, the options page is the one
the generator writes from the option table, every flag and subcommand the code accepts is
described (and nothing else), their examples parse, and they are installed."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pop3d import __version__
from pop3d.cli import admin, master
from pop3d.cli import pop3d as pop3d_cli
from pop3d.config import cyrus
from pop3d.config.options import OPTIONS
from pop3d.man import generate
from tests.support.lab import ROOT

MAN = ROOT / "pop3d" / "man"
PAGES = sorted(MAN.glob("*.[58]"))
NAMES = ["pop3d-admin.8", "pop3d-master.8", "pop3d.8", "pop3d.conf.5"]
ADMIN = [sys.executable, "-m", "pop3d.cli.admin"]


def test_the_pages_are_these() -> None:
    assert [p.name for p in PAGES] == NAMES


# --- rendering ---------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed (groff-base)")
@pytest.mark.parametrize("page", NAMES)
def test_groff_renders_without_warnings(page: str) -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stderr == ""


@pytest.mark.skipif(not shutil.which("man"), reason="man is not installed (man-db)")
@pytest.mark.parametrize("page", NAMES)
def test_man_renders_without_warnings(page: str) -> None:
    env = dict(os.environ, MANWIDTH="80", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    done = subprocess.run(
        ["man", "--warnings=w", "-l", str(MAN / page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    text = done.stdout
    assert "NAME" in text
    assert "SEE ALSO" in text
    # nothing left unrendered: no request at a line's start, no font escape
    assert not re.search(r"^\.[A-Za-z]", text, flags=re.MULTILINE)
    assert "\\f" not in text


@pytest.mark.parametrize("page", NAMES)
def test_title_line_names_page_and_version(page: str) -> None:
    name, _, section = page.rpartition(".")
    title = next(line for line in (MAN / page).read_text().splitlines() if line.startswith(".TH"))
    assert title.startswith(f".TH {name.upper().replace('-', chr(92) + '-')} {section} ")
    assert f'"pop3d {__version__}"' in title


# --- the generated options page ------------------------------------------------------------


def test_options_page_is_what_the_generator_writes() -> None:
    assert (MAN / "pop3d.conf.5").read_text("utf-8") == generate.render(), (
        "pop3d/man/pop3d.conf.5 is stale: run python -m pop3d.man.generate"
    )


def test_generator_runs_both_ways(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    module = [sys.executable, "-m", "pop3d.man.generate"]
    script = [sys.executable, str(MAN / "generate.py")]
    for command in (module, script):
        assert subprocess.run([*command, "--check"], env=env, timeout=60).returncode == 0
        out = tmp_path / "page.5"
        assert subprocess.run([*command, "-o", str(out)], env=env, timeout=60).returncode == 0
        assert out.read_text() == (MAN / "pop3d.conf.5").read_text()
        out.write_text(out.read_text().replace("poptimeout", "pop_timeout"))
        stale = subprocess.run(
            [*command, "--check", "-o", str(out)], env=env, capture_output=True, timeout=60
        )
        assert stale.returncode == 1
        assert b"stale" in stale.stderr


def _documented_options(text: str) -> list[str]:
    return re.findall(r"^\\fB([a-z0-9_\\-]+):\\fR", text, flags=re.MULTILINE)


def test_every_option_is_documented_and_nothing_else() -> None:
    for option in OPTIONS.values():
        assert option.doc.strip(), f"{option.name} has no doc"
    names = [n.replace("\\-", "-") for n in _documented_options(generate.render())]
    assert sorted(names) == names
    assert set(names) == set(OPTIONS)
    assert len(names) == len(OPTIONS)


def test_option_entries_show_default_and_type() -> None:
    text = generate.render()
    assert "\\fBpoptimeout:\\fR 10m\n" in text
    assert "\\fBallowapop:\\fR no\n" in text
    assert "\\fBtls_session_timeout:\\fR 1d\n" in text
    assert "\\fBservername:\\fR \\fI<none>\\fR\n" in text
    assert "\\fIType:\\fR duration, a bare number in minutes; at least 1s." in text
    assert "\\fIType:\\fR one of \\fBoff\\fR, \\fBmin\\fR, \\fBon\\fR." in text


def test_escape_and_duration() -> None:
    assert generate.escape(".x-y\\z") == "\\&.x\\-y\\ez"
    assert generate.escape("'quote") == "\\&'quote"
    assert [generate.duration(s) for s in (0, -1, 45, 600, 5400, 86400 + 61)] == [
        "0",
        "-1",
        "45s",
        "10m",
        "1h30m",
        "1d1m1s",
    ]


# --- flags and subcommands -------------------------------------------------------------------


def _plain(roff: str) -> str:
    """A tag line as the reader sees it: no macro name, quotes, font changes or escapes."""
    text = re.sub(r"^\.[A-Z]+\s*", "", roff)
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace('"', "")
    return " ".join(text.split())


def _section(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f".SH {name}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(".SH ")), len(lines))
    return lines[start + 1 : end]


def _tags(lines: list[str]) -> list[tuple[int, str]]:
    """(nesting depth, plain tag) of every .TP item; .RS/.RE nest items under the last one."""
    out: list[tuple[int, str]] = []
    depth = 0
    for index, line in enumerate(lines):
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
        elif line == ".TP":
            out.append((depth, _plain(lines[index + 1])))
    return out


def _getopt_flags(spec: str) -> dict[str, bool]:
    """-X -> whether it takes an argument."""
    return {
        f"-{letter}": spec[i + 1 : i + 2] == ":" for i, letter in enumerate(spec) if letter != ":"
    }


@pytest.mark.parametrize(
    ("page", "spec", "usage"),
    [
        ("pop3d.8", pop3d_cli.GETOPT, pop3d_cli.USAGE),
        ("pop3d-master.8", master.GETOPT, master.USAGE),
    ],
)
def test_every_getopt_flag_is_described(page: str, spec: str, usage: str) -> None:
    text = (MAN / page).read_text()
    flags = _getopt_flags(spec)
    described = {
        tag.split()[0]: len(tag.split()) > 1 for _, tag in _tags(_section(text, "OPTIONS"))
    }
    assert described == flags  # each flag, with an argument exactly where getopt wants one
    synopsis = _plain(" ".join(_section(text, "SYNOPSIS")))
    usage_flags = re.findall(r"\[(-\w)", usage)
    assert sorted(re.findall(r"\[ (-\w)", synopsis)) == sorted(flags) == sorted(usage_flags)


def test_pop3d_page_describes_kpop_and_exit_codes() -> None:
    text = _plain((MAN / "pop3d.8").read_text().replace("\n", " "))
    assert "KPOPV1.0" in text
    assert "Security caveat: KPOP protects the login, not the mail" in text
    assert "GSSAPI may negotiate a security layer" in text
    for code in ("64", "70", "76", "78"):
        assert f".TP .B {code} " in (MAN / "pop3d.8").read_text().replace("\n", " ")


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _options(parser: argparse.ArgumentParser) -> tuple[set[str], list[str]]:
    """(option strings, positional names) of a parser, without -h/--help."""
    options: set[str] = set()
    positionals: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            options.update(action.option_strings)
        else:
            positionals.append(str(action.metavar or action.dest))
    return options, positionals


def test_every_admin_subcommand_and_option_is_described() -> None:
    parser = admin._parser()
    text = (MAN / "pop3d-admin.8").read_text()
    top = {word for _, tag in _tags(_section(text, "OPTIONS")) for word in tag.split()}
    options, _ = _options(parser)
    assert options <= top
    assert {"-h", "--help"} <= {w.rstrip(",") for w in top}

    documented: dict[str, tuple[str, set[str]]] = {}  # command -> (its tag, its options)
    current = ""
    for depth, tag in _tags(_section(text, "COMMANDS")):
        if depth == 0:
            current = tag.split()[0]
            documented[current] = (tag, set())
        else:
            documented[current][1].update(w.rstrip(",") for w in tag.split() if w[0] == "-")
    commands = _subcommands(parser)
    assert set(documented) == set(commands)
    synopsis = _plain(" ".join(_section(text, "SYNOPSIS")))
    for name, sub in commands.items():
        tag, described = documented[name]
        wanted, positionals = _options(sub)
        assert described == wanted, name
        for positional in positionals:
            assert positional in tag, (name, positional)
        assert f" {name} " in f"{synopsis} ", name


# --- examples --------------------------------------------------------------------------------


def _cyrus_conf_examples(text: str) -> list[str]:
    blocks = re.findall(r"^\.nf\n(SERVICES \{.*?^\})\n\.fi", text, flags=re.MULTILINE | re.DOTALL)
    return [block.replace("\\-", "-") for block in blocks]


@pytest.mark.parametrize("page", ["pop3d.8", "pop3d-master.8"])
def test_cyrus_conf_examples_parse(page: str) -> None:
    try:
        socket.getservbyname("pop3s", "tcp")
    except OSError:
        pytest.skip("/etc/services has no pop3s (netbase)")
    examples = _cyrus_conf_examples((MAN / page).read_text())
    assert examples
    for example in examples:
        parsed = cyrus.parse_text(example, page)
        assert parsed.problems == []
        assert parsed.services
        for service in parsed.services:
            args = pop3d_cli.parse_arguments(list(service.argv[1:]))
            assert not (args.kpop and args.implicit_tls)
            assert not args.stdio


# --- installation ----------------------------------------------------------------------------


def test_pages_are_package_data_and_data_files() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    patterns = setuptools["package-data"]["pop3d"]
    assert {"man/*.5", "man/*.8"} <= set(patterns)
    installed = {
        (directory, Path(path).name)
        for directory, paths in setuptools["data-files"].items()
        for path in paths
    }
    assert installed == {(f"share/man/man{name[-1]}", name) for name in NAMES}
    for paths in setuptools["data-files"].values():
        for path in paths:
            assert (ROOT / path).is_file()


def test_admin_man_lists_and_prints_pages() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    listing = subprocess.run([*ADMIN, "man"], capture_output=True, text=True, env=env, timeout=60)
    assert listing.returncode == 0
    rows = dict(line.split("\t") for line in listing.stdout.splitlines())
    assert sorted(rows) == NAMES
    for name, path in rows.items():
        assert Path(path).read_text() == (MAN / name).read_text()
    asked_for = [("pop3d", "pop3d.8"), ("pop3d.conf", "pop3d.conf.5"), ("pop3d-admin.8", NAMES[0])]
    for asked, name in asked_for:
        # -C names no file: man reads no configuration
        shown = subprocess.run(
            [*ADMIN, "-C", "/nonexistent", "man", asked], capture_output=True, env=env, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == (MAN / name).read_bytes()
    unknown = subprocess.run([*ADMIN, "man", "imapd"], capture_output=True, env=env, timeout=60)
    assert unknown.returncode == 64
    assert b"no manual page 'imapd'" in unknown.stderr
