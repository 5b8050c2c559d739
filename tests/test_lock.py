"""requirements.lock: every package pinned, in step with pyproject's ranges and the venv."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from conftest import REPO
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.timeout(60)


def _lock() -> dict[str, list[tuple[Version, Marker | None]]]:
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    for raw in (REPO / "requirements.lock").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert [s.operator for s in spec] == ["=="], f"not pinned: {raw!r}"
        pins.setdefault(canonicalize_name(req.name), []).append(
            (Version(spec[0].version), req.marker)
        )
    return pins


def _direct() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return [Requirement(r) for r in reqs]


def _here(marker: Marker | None) -> bool:
    return marker is None or marker.evaluate()


def test_every_direct_dependency_is_locked_within_its_range():
    pins = _lock()
    for req in _direct():
        versions = pins.get(canonicalize_name(req.name))
        assert versions, f"{req.name} is in pyproject.toml but not in requirements.lock"
        for version, _ in versions:
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {req.name}=={version}, outside pyproject's "
                f"'{req.specifier}': refresh it with bash scripts/refresh-lock.sh"
            )


def test_torch_and_torchaudio_are_of_one_patch_release():
    pins = _lock()
    torch = [v for v, m in pins["torch"] if _here(m)]
    audio = [v for v, m in pins["torchaudio"] if _here(m)]
    assert torch
    assert audio
    assert torch[0].release == audio[0].release, (torch, audio)


def test_the_environment_is_the_lock():
    """What setup.sh installed is what the lock says (a hand upgrade is caught here)."""
    wrong = []
    for name, versions in _lock().items():
        wanted = [v for v, m in versions if _here(m)]
        if not wanted:
            continue
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock: {wanted[0]})")
            continue
        if have != wanted[0]:
            wrong.append(f"{name}: {have} installed, lock says {wanted[0]}")
    assert not wrong, "the venv differs from requirements.lock:\n" + "\n".join(wrong)


def test_lock_header_names_the_refresh_inputs():
    head = (REPO / "requirements.lock").read_text().splitlines()[:3]
    assert any("uv pip compile" in line for line in head)
    script = (REPO / "scripts" / "refresh-lock.sh").read_text()
    assert re.search(r"--constraint lock-constraints\.txt", script)
    assert "pyproject.toml" in script
