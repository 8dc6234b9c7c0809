"""The install is what CI tested: every requirement is pinned, and the suite runs on exactly those versions (a pytest
released after the last CI run once broke a fresh install)."""
import importlib.metadata
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("requirements.txt", "requirements-dev.txt", "requirements-nodeps.txt", "constraints.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(file):
    """{package: version} of a requirements file; a line that is not `name==version` fails the test."""
    found = {}
    with open(os.path.join(ROOT, file)) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                match = PIN.match(line)
                assert match, f"{file}: {line!r} is not pinned as name==version"
                found[canonical(match[1])] = match[2]
    return found


@pytest.mark.parametrize("file", FILES)
def test_every_requirement_is_pinned(file):
    assert pins(file)


def test_requirements_agree_with_the_constraints():
    locked = pins("constraints.txt")
    for file in ("requirements.txt", "requirements-dev.txt"):
        for name, version in pins(file).items():
            if name != "torch":  # pinned in requirements.txt alone: its wheel's local label differs by platform
                assert locked.get(name) == version, f"{file} pins {name}=={version}, constraints.txt {locked.get(name)}"


@pytest.mark.parametrize("file", FILES)
def test_installed_versions_are_the_pinned_ones(file):
    for name, version in pins(file).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            assert file == "constraints.txt", f"{name} ({file}) is not installed: run `make install-dev`"
            continue  # a transitive pin that this platform's packages do not need
        assert installed.split("+")[0] == version, (f"{name} {installed} is installed but {file} pins {version}: "
                                                    f"run `make install-dev` (or bash .ci/run for a clean virtualenv)")
