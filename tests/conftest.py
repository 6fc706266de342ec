import os
import warnings

import pytest

import capbridge

#: Confinement used by behaviour tests; escape tests pick their own.
CONFINEMENT = os.environ.get("CAPBRIDGE_TEST_CONFINEMENT", "strict")


def make_sandbox(grants=None, **kwargs):
    kwargs.setdefault("confinement", CONFINEMENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return capbridge.Sandbox(grants, **kwargs)


@pytest.fixture
def sandbox_factory():
    made = []

    def factory(grants=None, **kwargs):
        sb = make_sandbox(grants, **kwargs)
        made.append(sb)
        return sb

    yield factory
    for sb in made:
        sb.close()


@pytest.fixture
def sb(sandbox_factory):
    return sandbox_factory()


@pytest.fixture
def server():
    """A private fork server whose children run ``_forkserver_children.obey``."""
    from sandbox_vm._spawn import ForkServer

    fs = ForkServer(paths=(os.path.dirname(os.path.abspath(__file__)),), entry="_forkserver_children:obey")
    assert fs.ready(30)
    yield fs
    fs.close()
