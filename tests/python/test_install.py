"""Installing the package as the README says: a fresh `python3 -m venv --system-site-packages`,
`pip install --no-build-isolation --no-index` (offline, Debian's pip and setuptools), then
importing it from outside the source tree and predicting, with libtlearn found each way
tlearn/_lib.py documents (TLEARN_LIBRARY, pkg-config, the standard search).

Needs python3-venv, python3-pip and python3-setuptools (in .ci/run's package list).
"""
import os
import shutil
import subprocess
import sys

import pytest

import tlearn

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.normpath(os.path.join(HERE, "..", "..", "examples", "python"))
LIBRARY = os.environ["TLEARN_LIBRARY"]  # the freshly built libtlearn.so.1 (meson)

PROBE = r'''
import importlib.metadata, json, numpy as np, tlearn
m = tlearn.Model(3, 1, 1).set_seed(1)
m.add_dense("fc", 2)
m.set_tensor("fc.weight", np.array([[1, 2, 3], [0, 0, 1]], np.float32))
m.set_tensor("fc.bias", np.array([0.5, -1], np.float32))
print(json.dumps({"file": tlearn.__file__, "version": tlearn.__version__,
                  "metadata": importlib.metadata.version("tlearn"),
                  "library_version": tlearn.version(), "library": tlearn._C._name,
                  "out": m.predict(np.array([[1, 1, 1]])).tolist()}))
'''


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    # pip builds in the source directory (build/, *.egg-info): give it a copy, not the tree
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    env = clean_env()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")],
                   check=True, env=env, cwd=tmp, capture_output=True, timeout=300)
    py = str(tmp / "venv" / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index",
                        "--no-cache-dir", str(src)], env=env, cwd=tmp, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    work = tmp / "elsewhere"  # cwd outside the source tree
    work.mkdir()
    return py, tmp, work


def clean_env(**extra):
    """The environment without the test run's PYTHONPATH and TLEARN_LIBRARY, so that the
    installed copy and its own library search are what runs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TLEARN_LIBRARY", "PKG_CONFIG_PATH", "LD_LIBRARY_PATH")}
    env.update(extra)
    return env


def probe(venv, **env):
    import json
    py, _, work = venv
    r = subprocess.run([py, "-c", PROBE], env=clean_env(**env), cwd=work,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check(res, venv):
    _, tmp, _ = venv
    assert res["file"].startswith(str(tmp / "venv")), res["file"]  # the installed copy
    assert res["version"] == res["metadata"] == res["library_version"] == tlearn.__version__
    assert res["out"] == [[6.5, 0.0]]  # 1+2+3+0.5, 1-1


def test_installed_package_imports_from_outside_the_tree_with_tlearn_library(venv):
    res = probe(venv, TLEARN_LIBRARY=LIBRARY)
    check(res, venv)
    assert res["library"] == LIBRARY
    _, tmp, _ = venv
    site = os.path.dirname(res["file"])
    assert os.path.isfile(os.path.join(site, "py.typed"))


def test_installed_package_finds_the_library_through_pkg_config(venv):
    if shutil.which("pkg-config") is None:
        pytest.fail("pkg-config is missing (Debian package pkgconf)")
    _, tmp, _ = venv
    pc = tmp / "pc"
    pc.mkdir(exist_ok=True)
    libdir = os.path.dirname(LIBRARY)
    (pc / "tlearn.pc").write_text(
        "libdir=%s\n\nName: tlearn\nDescription: test\nVersion: %s\nLibs: -L${libdir} "
        "-ltlearn\n" % (libdir, tlearn.__version__))
    res = probe(venv, PKG_CONFIG_PATH=str(pc))
    check(res, venv)
    assert res["library"] == os.path.join(libdir, "libtlearn.so.1")


def test_installed_package_finds_the_library_through_the_standard_search(venv):
    res = probe(venv, LD_LIBRARY_PATH=os.path.dirname(LIBRARY), PKG_CONFIG_PATH="/nonexistent")
    check(res, venv)
    assert res["library"] == "libtlearn.so.1"  # ctypes.util.find_library's answer


def test_installed_package_without_a_library_says_where_it_looked(venv):
    py, _, work = venv
    code = "import ctypes.util; print(ctypes.util.find_library('tlearn'), flush=True); import tlearn"
    r = subprocess.run([py, "-c", code], env=clean_env(PKG_CONFIG_PATH="/nonexistent"),
                       cwd=work, capture_output=True, text=True, timeout=120)
    if r.stdout.split("\n")[0] != "None":  # installed system-wide: then that one loads
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0
        assert "libtlearn not found: set TLEARN_LIBRARY" in r.stderr, r.stderr


def test_lookup_order_in_a_checkout(tmp_path, monkeypatch):
    """tlearn/_lib.py's order: TLEARN_LIBRARY alone when set; else the checkout's build
    trees (build/ first, sanitizer builds skipped), then pkg-config's libdir, then
    ctypes.util.find_library. Checked on a fake checkout holding links to the real library."""
    import importlib.util
    root = tmp_path / "checkout"
    (root / "include" / "tlearn").mkdir(parents=True)
    (root / "include" / "tlearn" / "tlearn.h").write_text("")
    (root / "meson.build").write_text("")
    shutil.copytree(os.path.join(PACKAGE, "tlearn"), root / "examples" / "python" / "tlearn")
    for build in ("build-z", "build", "build-asan"):
        (root / build / "lib").mkdir(parents=True)
        os.symlink(LIBRARY, root / build / "lib" / "libtlearn.so.1")
    asan = root / "build-asan" / "lib" / "libtlearn.so.1"
    asan.unlink()
    asan.write_bytes(b"\x7fELF ... libasan.so.8 ...")
    pc = tmp_path / "pc"
    pc.mkdir()
    (pc / "tlearn.pc").write_text("libdir=%s\nName: tlearn\nDescription: t\nVersion: 1\n"
                                  "Libs: -ltlearn\n" % os.path.dirname(LIBRARY))
    spec = importlib.util.spec_from_file_location(
        "fake_lib", root / "examples" / "python" / "tlearn" / "_lib.py")
    lib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lib)
    monkeypatch.setattr(lib.ctypes.util, "find_library", lambda name: "libtlearn.so.1")
    monkeypatch.delenv("TLEARN_LIBRARY", raising=False)
    monkeypatch.setenv("PKG_CONFIG_PATH", str(pc))
    assert [p for p, _ in lib._candidates()] == [
        str(root / "build" / "lib" / "libtlearn.so.1"),
        str(root / "build-z" / "lib" / "libtlearn.so.1"),
        os.path.join(os.path.dirname(LIBRARY), "libtlearn.so.1"),
        "libtlearn.so.1"]
    monkeypatch.setenv("TLEARN_LIBRARY", "/explicit/libtlearn.so.1")
    assert list(lib._candidates()) == [("/explicit/libtlearn.so.1", True)]
    with pytest.raises(OSError, match="TLEARN_LIBRARY=/explicit/libtlearn.so.1 cannot be loaded"):
        lib.load_library()
