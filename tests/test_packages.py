"""What allow_imports opens, computed from installed metadata (sandbox_vm._packages), and
the checks of allow_imports / preload / env made before any process starts.

A fake site-packages is built in a temporary directory, so each rule is pinned down
without depending on what happens to be installed.
"""

from __future__ import annotations

import os

import pytest

from sandbox_vm import _config, _packages
from sandbox_vm._templates import shared_mappings


def dist(site, name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = (),
         top_level: str | None = None) -> None:
    """Install a fake distribution: ``files`` (relative path -> content) plus its dist-info."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(meta) + "\n\n")
    record = []
    for rel, content in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        record.append(f"{rel},,")
    record.append(f"{info.name}/METADATA,,")
    record.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level)


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "prefix" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    dist(site, "alpha", "1.0", {
        "alpha/__init__.py": "", "alpha/sub/__init__.py": "", "alpha.libs/libvendored.so.1": "",
        "../../../share/alpha/data.txt": "d", "../../../bin/alpha-script": "#!",
    }, requires=("beta>=2", 'gamma; extra == "g"', 'winonly; sys_platform == "win32"', "missingdep",
                 "ns-a", 'python-old; python_version < "3"'))
    dist(site, "beta", "2.0", {"beta/__init__.py": "", "_beta_helper.py": "",
                              "__pycache__/_beta_helper.cpython-311.pyc": ""}, top_level="beta\n_beta_helper\n")
    dist(site, "gamma", "1.0", {"gamma/__init__.py": ""})
    dist(site, "delta", "1.0", {"delta/__init__.py": ""}, requires=("alpha[g]",))
    dist(site, "ns-a", "1.0", {"ns/a/__init__.py": ""})
    dist(site, "ns-b", "1.0", {"ns/b/__init__.py": "", "ns/b/secret.txt": "s"})
    dist(site, "unrelated", "1.0", {"unrelated/__init__.py": ""})
    return site


def granted(access) -> set[str]:
    return {os.path.relpath(p, access_root(access)) for p in access.paths()}


def access_root(access) -> str:
    meta = next(e.path for e in access.entries if e.kind == _packages.METADATA)
    return os.path.dirname(meta)


def test_package_its_vendored_libs_metadata_data_and_dependencies(site) -> None:
    access = _packages.resolve(("alpha",), [str(site)])
    paths = granted(access)
    assert {"alpha", "alpha.libs", "alpha-1.0.dist-info", "beta", "_beta_helper.py",
            "__pycache__/_beta_helper.cpython-311.pyc", "ns/a"} <= paths
    assert os.path.join("..", "..", "..", "share", "alpha", "data.txt") in paths  # installed data
    assert os.path.join("..", "..", "..", "bin", "alpha-script") not in paths  # a script is not imported
    kinds = {os.path.basename(e.path): e.kind for e in access.entries}
    assert kinds["alpha.libs"] == _packages.VENDORED and kinds["alpha"] == _packages.PACKAGE
    assert kinds["data.txt"] == _packages.DATA
    names = {d.name: d.required_by for d in access.distributions}
    assert names == {"alpha": (), "beta": ("alpha",), "ns-a": ("alpha",)}
    assert "missingdep (required by alpha)" in access.missing


def test_nothing_else_is_opened(site) -> None:
    access = _packages.resolve(("alpha",), [str(site)])
    paths = granted(access)
    # not the extra, the other platform, the other portion of the namespace, the unrelated one,
    # nor the shared folders themselves (site-packages, ns/, __pycache__/)
    for closed in ("gamma", "winonly", "ns", "ns/b", "ns/b/secret.txt", "unrelated", "__pycache__", ".",
                   "delta", "python-old"):
        assert closed not in paths, closed
    assert not any(p.startswith(("gamma", "unrelated", "ns/b", "delta")) for p in paths)
    assert os.path.join(str(site), "ns") in access.finder_dirs  # imports of ns.a still work


def test_a_listed_link_out_of_site_packages_is_not_followed(site, tmp_path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("host secret")
    (site / "beta" / "leak.txt").symlink_to(outside)
    (site / "leak_top").symlink_to(tmp_path)
    (site / "leak_sibling").symlink_to(site / "gamma")
    share = site.parent.parent.parent / "share"
    share.mkdir(exist_ok=True)
    (share / "leak.dat").symlink_to(outside)
    record = site / "beta-2.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "beta/leak.txt,,\nleak_top/secret.txt,,\nleak_sibling,,\n"
                      "../../../share/leak.dat,,\n")
    paths = _packages.resolve(("beta",), [str(site)]).paths()
    assert str(outside) not in paths and str(tmp_path) not in paths
    assert not any(p.startswith((str(site / "leak_top"), str(site / "leak_sibling"))) for p in paths)


def test_extras_are_followed_when_asked_for(site) -> None:
    access = _packages.resolve(("delta",), [str(site)])
    names = {d.name for d in access.distributions}
    assert names == {"delta", "alpha", "beta", "gamma", "ns-a"}  # alpha[g] brings gamma


def test_a_name_from_top_level_txt_maps_to_its_distribution(site) -> None:
    access = _packages.resolve(("_beta_helper",), [str(site)])
    assert [d.name for d in access.distributions] == ["beta"]


def test_a_name_without_distribution_falls_back_to_its_location(tmp_path) -> None:
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "__init__.py").write_text("")
    access = _packages.resolve(("loose",), [str(tmp_path)])
    assert [e.path for e in access.entries] == [str(tmp_path / "loose")]
    assert access.distributions == ()


def test_standard_library_names_add_nothing() -> None:
    access = _packages.resolve(("json", "sys"))
    assert access.entries == () and access.stdlib == ("json", "sys")


def test_real_wheels_resolve_to_their_own_files() -> None:
    import numpy
    import pandas

    site = os.path.dirname(os.path.dirname(os.path.realpath(numpy.__file__)))
    access = _packages.resolve(("pandas",))
    paths = set(access.paths())
    assert os.path.dirname(os.path.realpath(pandas.__file__)) in paths
    assert os.path.dirname(os.path.realpath(numpy.__file__)) in paths
    libs = os.path.join(site, "numpy.libs")
    if os.path.isdir(libs):  # manylinux wheels vendor OpenBLAS there
        assert libs in paths
    assert {"numpy", "python-dateutil", "tzdata"} <= {d.name for d in access.distributions} | {"tzdata"}
    assert not any(os.path.basename(p).startswith(("pytest", "pydantic", "_pytest")) for p in paths)
    assert site not in paths
    assert any(e.kind == _packages.LIBRARY and "libstdc++" in e.path for e in access.entries)
    assert not access.unresolved


def test_describe_groups_what_a_person_needs_to_read(site) -> None:
    text = _packages.describe(_packages.resolve(("alpha",), [str(site)]))
    assert "alpha 1.0  (asked for)" in text
    assert "beta 2.0  (required by alpha)" in text
    assert "vendored libraries" in text and "alpha.libs" in text
    assert "missingdep (required by alpha)" in text
    assert "rest of site-packages stays unreadable" in text


# -- checks made before any process starts --------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("numpy", "not a bare string: write allow_imports=('numpy',)"),
    (("no_such_module_xyz",), "no module named 'no_such_module_xyz'"),
    (("numpy", "two words"), "not 'two words'"),
    (("python-dateutil",), "imported as 'dateutil'"),
    ((b"numpy",), "not b'numpy'"),
])
def test_bad_names_are_value_errors_naming_the_problem(value, message) -> None:
    with pytest.raises(ValueError) as info:
        _config.sandbox_options(allow_imports=value)
    assert message in str(info.value)
    with pytest.raises(ValueError):
        _config.sandbox_options(preload=value)


def test_names_are_normalized() -> None:
    options = _config.sandbox_options(allow_imports=["regex", "regex"], preload=("numpy.linalg",), env=None)
    assert options == {"allow_imports": ("regex", "numpy"), "preload": ("numpy.linalg",), "env": ()}
    assert _config.sandbox_options(allow_imports=None)["allow_imports"] == ()
    with pytest.raises(TypeError):
        _config.sandbox_options(allow_imports=5)


@pytest.mark.parametrize("env, error, message", [
    ({"OMP_NUM_THREADS": 4}, TypeError, "write OMP_NUM_THREADS='4'"),
    ({"A=B": "x"}, ValueError, "not a variable name"),
    ({"": "x"}, ValueError, "not a variable name"),
    ({"X": "a\0b"}, ValueError, "NUL"),
    ({"LD_LIBRARY_PATH": "/x"}, ValueError, "only when a program starts"),
    ({"PYTHONPATH": "/x"}, ValueError, "only when a program starts"),
    ({"X": "y" * 40000}, ValueError, "at most 32 KiB"),
    (["A", "B"], TypeError, "mapping"),
])
def test_bad_env_is_refused(env, error, message) -> None:
    with pytest.raises(error) as info:
        _config.check_env(env)
    assert message in str(info.value)


def test_env_sits_on_the_thread_defaults() -> None:
    config = _config.SandboxConfig(env=_config.check_env({"OMP_NUM_THREADS": "4", "MY_SETTING": "x"}))
    environment = config.environment()
    assert environment["OMP_NUM_THREADS"] == "4" and environment["MY_SETTING"] == "x"
    assert environment["OPENBLAS_NUM_THREADS"] == "1"
    assert set(_config.SandboxConfig().environment()) == set(_config.THREAD_ENV)


def test_shared_mappings_that_a_template_refuses(tmp_path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r--s 00000000 fe:00 1 /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache\n"
        "7f0000001000-7f0000002000 rw-s 00000000 00:01 2 /dev/zero (deleted)\n"
        "7f0000002000-7f0000003000 r--s 00000000 00:01 3 /memfd:pool (deleted)\n"
        "7f0000003000-7f0000004000 rw-p 00000000 00:00 0 \n"
        "7f0000004000-7f0000005000 rw-s 00000000 fe:00 4 /data/file.bin\n"
        "7f0000005000-7f0000006000 r--p 00000000 fe:00 5 /usr/lib/libc.so.6\n"
    )
    found = shared_mappings(str(maps))
    assert [line.split()[2] for line in found] == ["/dev/zero", "/memfd:pool", "/data/file.bin"]
