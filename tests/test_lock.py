"""requirements.lock is what the package ships with and what scripts/audit.sh audits: it
must pin every runtime dependency (the transitive ones too), and the test environment must
have been installed from it, or the audit would vouch for versions nobody runs."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"requirements.lock: not a pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(text) for text in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for requirement in _runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name]), (requirement, pins[name])


def test_the_lock_is_closed_under_the_dependencies_of_what_it_pins() -> None:
    pins = _pins()
    for name in pins:
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra or another platform's dependency
            assert canonicalize_name(requirement.name) in pins, f"{name} needs {text}"


def test_the_environment_runs_the_locked_versions() -> None:
    for name, version in _pins().items():
        assert metadata.version(name) == version, f"{name}: installed {metadata.version(name)}"
