"""The layer rule, read from the code: every import of a pop3d module points down the stack
(DESIGN.md, "Layers"), and packages form no cycle. A new mechanism that needed the POP3
package, or configuration that needed SASL, fails here."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pop3d"

# Bottom first. A unit may import its own modules and any unit of a lower rank; units of
# one rank are independent of each other (SASL and KPOP know nothing of one another).
RANKS: dict[str, int] = {
    "requests": 0,  # the Request base every sans-I/O core yields
    "security": 0,  # secrets, the one policy
    "config": 1,  # imapd.conf, cyrus.conf
    "message": 1,  # the wire form of a stored message
    "storage": 2,
    "man": 2,  # the manual pages; pop3d.conf.5 is generated from config's option table
    "transport": 2,  # TLS, PROXY, the security-layer stack
    "kerberos": 2,  # MIT libkrb5 (ctypes) and the principal -> user rule
    "sasl": 3,
    "kpop": 3,
    "auth": 4,  # credentials: answers the requests sasl (and kpop) define
    "protocol": 5,  # the POP3 session
    "server": 6,  # drivers
    "cli": 7,
    "demo": 7,
    "__main__": 8,
}


def unit_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "pop3d"
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every pop3d module ``path`` imports, at any depth (function-level imports count)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("pop3d"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("pop3d"):
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; write the absolute name")
    return found


def edges(package: Path = PACKAGE) -> dict[tuple[str, str], list[str]]:
    """(from unit, to unit) -> the modules that make that edge."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        source = module_name(path, package)
        for target in imports(path):
            a, b = unit_of(source), unit_of(target)
            if a != b:
                out[(a, b)].append(f"{source} -> {target}")
    return out


def test_every_unit_has_a_rank() -> None:
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(RANKS), f"give these a rank in RANKS: {sorted(units - set(RANKS))}"


def upward_edges(package: Path = PACKAGE) -> list[str]:
    return [
        f"{a} (rank {RANKS[a]}) imports {b} (rank {RANKS[b]}): {', '.join(why)}"
        for (a, b), why in sorted(edges(package).items())
        if b != "__init__" and RANKS[b] >= RANKS[a]
    ]


def test_imports_point_down_the_stack() -> None:
    upward = upward_edges()
    assert not upward, "\n".join(upward)


def test_units_form_no_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges():
        graph[a].add(b)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize(
    ("module", "statement"),
    [
        ("sasl/plain.py", "from pop3d.protocol.events import Send"),
        ("config/imapd.py", "from pop3d.sasl import registry"),
        ("sasl/plain.py", "import pop3d.kpop.handshake"),  # same rank: independent
        ("transport/tls.py", "def f():\n    from pop3d.server import channel"),
    ],
)
def test_the_rule_catches_an_upward_import(tmp_path: Path, module: str, statement: str) -> None:
    """The check itself can fail: the edges it replaced are caught in a copy of the tree."""
    copy = tmp_path / "pop3d"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / "kpop").mkdir(exist_ok=True)
    (copy / "kpop" / "handshake.py").touch()
    assert not upward_edges(copy)
    with (copy / module).open("a") as handle:
        handle.write(f"\n{statement}\n")
    assert upward_edges(copy)
