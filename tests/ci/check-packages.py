#!/usr/bin/python3
"""Is everything the tests use installed by .ci/run on a fresh Debian machine?

Lists what the tests need from the system, maps each to the Debian package that provides
it (dpkg -S on the file), and fails when a package is neither in .ci/run's install list
(the `packages=(...)` array and its other `apt-get install` lines) nor pulled in by one of
those (their Depends/Pre-Depends, recursively; .ci/run installs without Recommends).

What the tests need:
  - Python modules imported by tests/, examples/python/ and bench/ (run by /usr/bin/python3;
    the standard library and the project's own modules aside), and by Python embedded in
    tests/ shell scripts, located by importing them;
  - programs and files: every meson test's command (meson-info/intro-tests.json of BUILD_DIR), every
    find_program() and exe_wrapper of the meson.build files, the commands, CC= values and
    absolute /usr paths of the shell scripts under tests/ and .ci/run, and literal commands
    of subprocess calls in the Python tests;
  - build dependencies: dependency() and cc.find_library() of the meson.build files, through
    their pkg-config file or shared library.

Usage: check-packages.py SOURCE_DIR BUILD_DIR [--without PKG]... [--expect-missing P1,P2]
  --without drops PKG from the install list first (to show that the check catches it);
  --expect-missing: exit 0 exactly when the packages reported missing are these.
Exit status 0 when everything is covered, 1 otherwise (each gap named).
"""
import ast
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

PY = "/usr/bin/python3"


def dpkg_owner(path):
    """The package owning @p path (also tried through symlinks and /usr-merge), or None."""
    cands = [path, os.path.realpath(path)]
    for p in list(cands):
        if p.startswith("/usr/"):
            cands.append(p[4:])
        elif p.startswith(("/bin/", "/sbin/", "/lib/", "/lib64/")):
            cands.append("/usr" + p)
    for p in cands:
        r = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            # "pkg[:arch][, pkg2]: /path"; diversions say "diversion by ..."
            for line in r.stdout.splitlines():
                if line.startswith("diversion "):
                    continue
                pkgs = line.rsplit(": ", 1)[0]
                return pkgs.split(",")[0].strip().split(":")[0]
    return None


def ci_packages(ci_file):
    text = open(ci_file).read()
    m = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    if not m:
        sys.exit(f"check-packages: no packages=(...) array in {ci_file}")
    pkgs = set()
    for line in m.group(1).splitlines():
        pkgs.update(w for w in line.split("#")[0].split() if w)
    # other explicit installs (e.g. cargo when no toolchain is on the machine)
    for line in text.splitlines():
        if "apt-get install" in line and "packages[@]" not in line:
            words = line.split("apt-get install", 1)[1].split()
            pkgs.update(w for w in words if re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", w))
    return pkgs


def dpkg_status():
    """Installed packages: name -> (depends, provides, base) where base is true for what
    every Debian system has (Essential: yes, or Priority: required)."""
    fmt = "${Package}\t${Status}\t${Depends}, ${Pre-Depends}\t${Provides}\t${Essential}\t${Priority}\n"
    r = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True)
    pkgs = {}
    for line in r.stdout.splitlines():
        name, status, deps, prov, essential, prio = (line.split("\t") + [""] * 6)[:6]
        if "install ok installed" in status:
            pkgs[name] = (deps, prov, essential == "yes" or prio == "required")
    return pkgs


def closure(roots, pkgs):
    """Listed packages, the base system, and what installing them pulls in."""
    prov = {}
    for name, (_, provides, _) in pkgs.items():
        for p in provides.split(","):
            p = p.strip().split(" ")[0]
            if p:
                prov.setdefault(p, []).append(name)
    seen = set()
    todo = list(roots) + [n for n, v in pkgs.items() if v[2]]
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        if pkg not in pkgs:
            todo += prov.get(pkg, [])
            continue
        for group in pkgs[pkg][0].split(","):
            alts = [a.strip().split(" ")[0].split(":")[0] for a in group.split("|") if a.strip()]
            # the first alternative that is installed (or provided) is what apt took
            for a in alts:
                if a in pkgs or a in prov:
                    todo.append(a)
                    break
    return seen


def python_modules(src):
    files = []
    for pattern in ("tests/**/*.py", "examples/python/**/*.py", "bench/**/*.py"):
        files += glob.glob(os.path.join(src, pattern), recursive=True)
    local = set()
    for f in glob.glob(os.path.join(src, "**/*.py"), recursive=True):
        local.add(os.path.splitext(os.path.basename(f))[0])
    for d in glob.glob(os.path.join(src, "**/__init__.py"), recursive=True):
        local.add(os.path.basename(os.path.dirname(d)))
    mods, progs = {}, {}
    for f in files:
        try:
            tree = ast.parse(open(f).read(), f)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in local:
                    mods.setdefault(top, os.path.relpath(f, src))
            # subprocess.run(["prog", ...]) and friends: a literal first word
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                    and node.args and isinstance(node.args[0], (ast.List, ast.Tuple))
                    and node.args[0].elts and isinstance(node.args[0].elts[0], ast.Constant)
                    and isinstance(node.args[0].elts[0].value, str)):
                progs.setdefault(node.args[0].elts[0].value, os.path.relpath(f, src))
    # Python embedded in shell scripts (python3 - <<EOF ... EOF): its import lines
    for f in glob.glob(os.path.join(src, "tests/**/*.sh"), recursive=True):
        for m in re.finditer(r"^\s*(?:from\s+([A-Za-z_]\w*)[\w.]*\s+import\b|import\s+([A-Za-z_]\w*))",
                             open(f).read(), re.M):
            top = m.group(1) or m.group(2)
            if top not in local:
                mods.setdefault(top, os.path.relpath(f, src))
    return mods, progs


def stdlib_names():
    r = subprocess.run([PY, "-c", "import sys; print('\\n'.join(sorted(sys.stdlib_module_names)))"],
                       capture_output=True, text=True)
    return set(r.stdout.split()) | {"__future__"}


SHELL_WORDS = {"if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case",
               "esac", "in", "function", "!", "{", "}", "exec", "command", "time", "nice", "env",
               "set", "export", "local", "readonly", "return", "exit", "shift", "cd", "echo",
               "printf", "read", "test", "[", "[[", "]]", "true", "false", ":", ".", "source",
               "eval", "trap", "wait", "unset", "break", "continue", "umask", "kill", "alias"}


def strip_quotes(text):
    """Empty the quoted text that runs nothing: single-quoted text over several lines
    (python -c '...'), double-quoted text but its $(...) and ${...} ("...; see above")."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            j = i + 1
            while j < len(text) and text[j] != c:
                j += 2 if c == '"' and text[j] == "\\" else 1
            body = text[i + 1:j]
            if c == "'":
                body = "" if "\n" in body else body
            else:  # only its command substitutions and ${VAR:-default} run anything
                body = " ; ".join(re.findall(r"\$\([^)]*\)|\$\{[^}]*\}", body))
            out.append(c + body + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def shell_programs(path):
    """Command words and CC= values of a shell script (a heuristic: words that are programs
    on PATH at the start of a command)."""
    progs = set()
    text = open(path).read()
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", text, flags=re.S)  # here-documents
    text = re.sub(r"^packages=\(.*?^\)", "", text, flags=re.S | re.M)  # .ci/run's list
    text = text.replace("\\\n", " ")  # continued lines
    text = "\n".join("" if l.lstrip().startswith("#") else l.split(" #", 1)[0]
                      for l in text.splitlines())  # comments
    text = strip_quotes(text)
    for m in re.finditer(r"\$\{(?:CC|CXX|PYTHON\w*):-([A-Za-z][\w.+-]*)\}", text):  # ${CC:-cc}
        progs.add(m.group(1))
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for m in re.finditer(r"\bCC=([\w.+-]+)", line):
            progs.add(m.group(1))
        for part in re.split(r"&&|\|\||[;|&()`]|\$\(", line):
            try:
                words = shlex.split(part, posix=True)
            except ValueError:
                words = part.split()
            if words and words[0] in ("for", "select"):
                continue  # `for NAME in WORDS`: a variable and values, no command
            while words and (re.fullmatch(r"\w+=.*", words[0]) or words[0] in SHELL_WORDS):
                words = words[1:]
            if words and re.fullmatch(r"[A-Za-z][\w.+-]*", words[0]):
                progs.add(words[0])
    return progs


def meson_needs(src):
    progs, deps, libs = set(), set(), set()
    for f in glob.glob(os.path.join(src, "**/meson.build"), recursive=True):
        t = open(f).read()
        progs.update(re.findall(r"find_program\(\s*'([^']+)'", t))
        progs.update(re.findall(r"exe_wrapper:\s*\[\s*'([^']+)'", t))
        deps.update(re.findall(r"\bdependency\(\s*'([^']+)'", t))
        libs.update(re.findall(r"find_library\(\s*'([^']+)'", t))
    return progs, deps, libs


def main():
    args = sys.argv[1:]
    without, expect = [], None
    while "--without" in args:
        i = args.index("--without")
        without.append(args[i + 1])
        del args[i:i + 2]
    if "--expect-missing" in args:
        i = args.index("--expect-missing")
        expect = set(args[i + 1].split(","))
        del args[i:i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    src, build = (os.path.abspath(a) for a in args)
    listed = ci_packages(os.path.join(src, ".ci", "run")) - set(without)
    have = closure(listed, dpkg_status())
    needs = []  # (what, where from, package or None, note)

    stdlib = stdlib_names()
    mods, subprocs = python_modules(src)
    for mod, where in sorted(mods.items()):
        if mod in stdlib:
            continue
        r = subprocess.run([PY, "-c", f"import {mod} as m; print(getattr(m, '__file__', '') or '')"],
                           capture_output=True, text=True)
        f = r.stdout.strip()
        if r.returncode != 0 or not f:
            needs.append((f"python module {mod}", where, None,
                          "not importable by /usr/bin/python3" if r.returncode else "built in"))
            continue
        needs.append((f"python module {mod}", where, dpkg_owner(f), f))

    progs = {}
    intro = os.path.join(build, "meson-info", "intro-tests.json")
    for t in json.load(open(intro)):
        cmd = t["cmd"][0]
        if not os.path.realpath(cmd).startswith((build + os.sep, src + os.sep)):
            progs.setdefault(cmd, f"meson test {t['name']}")
    mprogs, deps, libs = meson_needs(src)
    for p in mprogs:
        progs.setdefault(p, "meson.build find_program/exe_wrapper")
    scripts = glob.glob(os.path.join(src, "tests/**/*.sh"), recursive=True) + \
        [os.path.join(src, ".ci", "run")]
    for s in scripts:
        for p in shell_programs(s):
            progs.setdefault(p, os.path.relpath(s, src))
        # files named by absolute path (an OpenMP tool, an interpreter...)
        for f in re.findall(r"(?<![\w.$])(/usr/[\w./+-]+)", open(s).read()):
            if os.path.isfile(f):
                progs.setdefault(f, os.path.relpath(s, src))
    for p, where in subprocs.items():
        progs.setdefault(p, where)
    for p, where in sorted(progs.items()):
        path = p if os.path.isabs(p) else shutil.which(p, path=os.environ.get("PATH", "") +
                                                       ":/usr/sbin:/sbin:/root/.cargo/bin")
        if not path:
            if shutil.which(p) is None and (p in listed or os.path.isabs(p) is False and
                                            not os.path.exists(os.path.join(src, p))):
                # not a program here (a shell function or variable word), unless listed
                if p not in listed:
                    continue
            needs.append((f"program {p}", where, None, "not found"))
            continue
        if os.path.realpath(path).startswith((src + os.sep, build + os.sep)):
            continue
        owner = dpkg_owner(path)
        name = os.path.basename(p)
        if owner is None and os.path.exists("/usr/bin/" + name):
            owner = dpkg_owner("/usr/bin/" + name)  # e.g. a pyenv shim here; Debian's there
        if owner is None and name in listed:
            owner = name  # installed outside dpkg here (e.g. rustup's cargo); .ci/run installs it
        needs.append((f"program {p}", where, owner, path))

    for d in sorted(deps):
        if d in ("threads", "openmp"):  # the compiler's own (libc, libgomp/libomp)
            continue
        r = subprocess.run(["pkg-config", "--variable=pcfiledir", d], capture_output=True, text=True)
        if r.returncode != 0 and d in libs:
            continue  # found by cc.find_library() instead (blis): checked below
        pc = os.path.join(r.stdout.strip(), d + ".pc") if r.returncode == 0 else None
        needs.append((f"dependency {d}", "meson.build", dpkg_owner(pc) if pc else None,
                      pc or "no pkg-config file"))
    for lib in sorted(libs):
        found = None
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib", "/lib/x86_64-linux-gnu"):
            if os.path.exists(os.path.join(d, f"lib{lib}.so")):
                found = os.path.join(d, f"lib{lib}.so")
                break
        if found:
            needs.append((f"library {lib}", "meson.build", dpkg_owner(found), found))

    missing, gaps = 0, set()
    for what, where, pkg, note in needs:
        ok = pkg is not None and pkg in have
        missing += not ok
        if not ok:
            gaps.add(pkg or what)
        status = "ok" if ok else "MISSING"
        print(f"{status:8} {what:34} {pkg or '?':28} ({where}; {note})")
    if without:
        print(f"# dropped from the list for this run: {' '.join(without)}")
    print(f"# {len(needs)} needs, {missing} not installed by .ci/run "
          f"({len(listed)} packages listed, {len(have)} with their dependencies)")
    if expect is not None:  # the check's own test: exactly these must be reported
        print(f"# expected missing: {' '.join(sorted(expect))}; found: {' '.join(sorted(gaps))}")
        return 0 if gaps == expect else 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
