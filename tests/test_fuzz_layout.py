"""The ClusterFuzzLite / OSS-Fuzz layout of the fuzz targets, checked statically.

``make fuzz-check`` (fuzz/oss-fuzz-check.sh) runs .clusterfuzzlite/build.sh
and every fuzzer it makes; this test checks, without building anything, that
the layout it relies on is complete: every target of fuzz/targets.py has its
standalone ``fuzz/fuzz_<target>.py`` with ``TestOneInput``, build.sh packages
every target but the ones it names (with a seed corpus zip from
``fuzz/corpus/<target>``), the libFuzzer dictionaries parse, and the
Dockerfile pins the Debian source package bootstrap.sh builds.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the fuzz package lives at the top of the checkout
    sys.path.insert(0, str(REPO))

from fuzz.targets import TARGETS  # noqa: E402

CFL = REPO / ".clusterfuzzlite"
BUILD_SH = CFL / "build.sh"
DICTS = REPO / "fuzz" / "dicts"

# libFuzzer's dictionary syntax (FuzzerUtil.cpp ParseOneDictionaryEntry,
# ParseDictionaryFile): `name="value"` or `"value"`, where value escapes only
# \\, \" and \xHH; blank lines and lines starting with # are skipped.
_DICT_LINE = re.compile(r'^(?:[A-Za-z0-9_]+=)?"((?:[^"\\]|\\\\|\\"|\\x[0-9A-Fa-f]{2})*)"$')


def parse_dict(text: str) -> list[bytes]:
    """The entries of a libFuzzer dictionary; ValueError names a bad line."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _DICT_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a libFuzzer dictionary entry: {raw!r}")
        value = re.sub(
            rb"\\(x[0-9A-Fa-f]{2}|\\|\")",
            lambda m: bytes([int(m.group(1)[1:], 16)]) if m.group(1)[:1] == b"x" else m.group(1),
            match.group(1).encode(),
        )
        entries.append(value)
    return entries


def _not_packaged() -> set[str]:
    match = re.search(r'^NOT_PACKAGED="([^"]*)"', BUILD_SH.read_text(), re.MULTILINE)
    assert match, "build.sh names the targets it does not package in NOT_PACKAGED"
    return set(match.group(1).split())


def test_not_packaged_targets_exist() -> None:
    assert _not_packaged() <= set(TARGETS)
    # cost starts interpreters from a checkout; the differential targets need their peers
    assert _not_packaged() == {"cost", "toc_diff", "dumpfile_diff"}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_has_a_standalone_entry_point(target: str) -> None:
    script = REPO / "fuzz" / f"fuzz_{target}.py"
    assert script.is_file(), f"fuzz/fuzz_{target}.py is missing"
    tree = ast.parse(script.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "TestOneInput" in functions
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "instrumented"
    ]
    assert [ast.literal_eval(c.args[0]) for c in calls] == [target], "runs another target"
    assert "standalone(sys.argv, TestOneInput)" in script.read_text()


def test_no_entry_point_without_a_target() -> None:
    names = {p.stem.removeprefix("fuzz_") for p in (REPO / "fuzz").glob("fuzz_*.py")}
    assert names == set(TARGETS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_packaged_target_gets_a_seed_corpus(target: str) -> None:
    seeds = REPO / "fuzz" / "corpus" / target
    assert seeds.is_dir() and any(seeds.iterdir()), f"fuzz/corpus/{target} is empty"
    text = BUILD_SH.read_text()
    # build.sh zips fuzz/corpus/$target into $OUT/fuzz_$target_seed_corpus.zip for
    # every fuzz/fuzz_*.py it does not skip (OSS-Fuzz: <fuzzer>_seed_corpus.zip).
    assert 'cp -r "$REPO/fuzz" "$WORK/fuzz-path/"' in text
    assert 'for fuzzer in "$WORK/fuzz-path/fuzz"/fuzz_*.py; do' in text
    assert 'zip -q -j "$OUT/${name}_seed_corpus.zip" "$REPO/fuzz/corpus/$target"/*' in text
    assert 'compile_python_fuzzer "$fuzzer"' in text


def test_pyinstaller_path_holds_the_fuzz_package_alone() -> None:
    # PyInstaller searches --paths folders and the parent of a script's package
    # first: the checkout's root would make its composefs_py (no compiled
    # extension) shadow the installed one.
    text = BUILD_SH.read_text()
    assert '(cd "$WORK" && compile_python_fuzzer "$fuzzer" --paths "$WORK/fuzz-path" \\\n' in text
    # composefs_py._lcfs imports _cffi_backend from C, where PyInstaller does not look.
    assert "--hidden-import _cffi_backend)" in text
    assert 'cp -r "$REPO/fuzz" "$WORK/fuzz-path/"' in text
    assert '--paths "$REPO"' not in text


def test_stand_ins_are_executable() -> None:
    folder = REPO / "fuzz" / "oss-fuzz-stand-ins"
    names = {p.name for p in folder.iterdir()}
    assert names == {"compile_python_fuzzer", "pip3", "python3"}
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o111, f"{path.name} is not executable"


@pytest.mark.parametrize("target", ["toc", "dumpfile", "writer"])
def test_dictionaries_parse(target: str) -> None:
    path = DICTS / f"{target}.dict"
    entries = parse_dict(path.read_text())
    assert len(entries) >= 20
    assert len(set(entries)) == len(entries), "duplicate entries"
    if target == "toc":
        assert b'"entries":' in entries and b'"reg"' in entries
    else:
        assert b"\n" in entries and b"40755" in entries


def test_the_dictionary_parser_refuses_what_libfuzzer_refuses() -> None:
    assert parse_dict('a="x\\x41\\\\\\""\n# c\n\n"y"') == [b'xA\\"', b"y"]
    for bad in ['a="unterminated', "a=x", '"bad \\q escape"', 'a-b="x"']:
        with pytest.raises(ValueError):
            parse_dict(bad)


def test_docker_image_and_project() -> None:
    dockerfile = (CFL / "Dockerfile").read_text()
    assert "FROM gcr.io/oss-fuzz-base/base-builder-python" in dockerfile
    assert "COPY .clusterfuzzlite/build.sh $SRC/" in dockerfile
    assert "fetch-composefs.sh $SRC/composefs" in dockerfile
    project = (CFL / "project.yaml").read_text()
    assert re.search(r"^language: python$", project, re.MULTILINE)
    assert re.search(r"^  - address$", project, re.MULTILINE)


def test_the_pinned_debian_source_is_the_one_bootstrap_fetched() -> None:
    fetch = (CFL / "fetch-composefs.sh").read_text()
    pins = dict(re.findall(r"^(composefs_\S+) ([0-9a-f]{64}) [0-9a-f]{40}$", fetch, re.MULTILINE))
    assert set(pins) == {
        "composefs_1.0.8-3.dsc",
        "composefs_1.0.8.orig.tar.gz",
        "composefs_1.0.8-3.debian.tar.xz",
    }
    orig = REPO / ".deps" / "src" / "composefs_1.0.8.orig.tar.gz"
    if not orig.is_file():
        pytest.skip("no Debian source fetched by scripts/bootstrap.sh")
    assert hashlib.sha256(orig.read_bytes()).hexdigest() == pins[orig.name]


def test_make_fuzz_check_runs_the_local_build_check() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^fuzz-check: fuzz-deps\n\tfuzz/oss-fuzz-check.sh$", makefile, re.MULTILINE)
