"""The differential checks of fuzz/differential.py against their peers.

* ``parse_dumpfile`` + the native writer against ``mkcomposefs --from-file``
  as a Hypothesis property: valid dumpfiles from
  :mod:`composefs_py.strategies` (every spelling of every field) and hostile
  ones (the strategies' mutations, with random byte corruption): where both
  accept, the images are equal byte for byte; where one side accepts, the
  refusal is a row of ``DUMPFILE_DIFFERENCES`` (skipped without mkcomposefs,
  which scripts/bootstrap.sh builds, so it runs in CI).
* every row of both tables: its example is explained by that very row, and
  the row has its line in fuzz/CAMPAIGNS.md;
* an unexplained one-sided acceptance is a finding (a stand-in peer that
  takes anything);
* the long-lived TOC peer (fuzz/peers/build-serve.sh) answers as the
  one-shot one does, where both are built;
* mkcomposefs's fork server (fuzz/peers/build-mkcomposefs-serve.sh, built
  here into a scratch folder) answers as a mkcomposefs process does and
  gives the same verdicts: refusals, accepted inputs with equal images, a
  child killed by a signal, a child that hangs (the last two made by the
  server's test-only options, since no known input crashes mkcomposefs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs_py import strategies as S

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the fuzz package lives at the top of the checkout
    sys.path.insert(0, str(REPO))

from fuzz import peers  # noqa: E402
from fuzz.differential import (  # noqa: E402
    DUMPFILE_DIFFERENCES,
    DUMPFILE_EXAMPLES,
    TOC_DIFFERENCES,
    TOC_EXAMPLES,
    Difference,
    compare_dumpfile,
    compare_toc,
)

CAMPAIGNS = REPO / "fuzz" / "CAMPAIGNS.md"


@pytest.fixture(scope="module")
def toc_peer() -> peers.TocPeer:
    if not peers.TocPeer.available():
        pytest.skip(
            f"the containers/storage peer is not built ({peers.CSTORAGE_PEER}): run "
            "../shared/peers/containers-storage/setup.sh .deps/cstorage"
        )
    return peers.TocPeer()


def _dumpfile_cases() -> st.SearchStrategy[bytes]:
    valid = S.dumpfiles(max_entries=8).map(lambda text: text.encode("utf-8", "surrogateescape"))
    return st.one_of(valid, S.hostile_dumpfiles())


@settings(
    max_examples=int(os.environ.get("DUMPFILE_PEER_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=_dumpfile_cases())
def test_parse_dumpfile_matches_mkcomposefs(data: bytes, mkcomposefs: Path) -> None:
    verdict = compare_dumpfile(data)
    assert not verdict.finding, f"{verdict.detail}\n{data[:2000]!r}"


@pytest.mark.parametrize("row", DUMPFILE_DIFFERENCES, ids=lambda row: row.label)
def test_dumpfile_difference_example(row: Difference, mkcomposefs: Path) -> None:
    verdict = compare_dumpfile(DUMPFILE_EXAMPLES[row.label])
    assert verdict.outcome == "explained" and verdict.difference == row, verdict


@pytest.mark.parametrize("row", TOC_DIFFERENCES, ids=lambda row: row.label)
def test_toc_difference_example(
    row: Difference, toc_peer: peers.TocPeer, mkcomposefs: Path
) -> None:
    verdict = compare_toc(TOC_EXAMPLES[row.label], toc_peer)
    assert verdict.outcome == "explained" and verdict.difference == row, verdict


def test_every_row_has_an_example_and_a_line_in_campaigns() -> None:
    text = CAMPAIGNS.read_text()
    for table, examples in (
        (TOC_DIFFERENCES, TOC_EXAMPLES),
        (DUMPFILE_DIFFERENCES, DUMPFILE_EXAMPLES),
    ):
        labels = [row.label for row in table]
        assert len(set(labels)) == len(labels), "a label appears twice"
        assert set(examples) == set(labels)
        for row in table:
            assert f"| `{row.label}` |" in text, f"fuzz/CAMPAIGNS.md has no row for {row.label}"


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "fuzz" / "crashes" / "dumpfile_diff").glob("row-*")),
    ids=lambda path: path.name,
)
def test_an_input_that_found_a_row_replays_as_that_row(path: Path, mkcomposefs: Path) -> None:
    verdict = compare_dumpfile(path.read_bytes())
    assert verdict.outcome == "explained", verdict
    assert verdict.difference is not None and verdict.difference.label == path.stem[4:], verdict


def test_the_readme_compat_paragraph_names_every_toc_difference() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("**compat.**")
    paragraph = readme[start : readme.index("\n\n", start)]
    missing = [row.label for row in TOC_DIFFERENCES if f"`{row.label}`" not in paragraph]
    assert not missing, f"README's compat paragraph does not name {missing}"


class _TakesAnything(peers.TocPeer):
    """A peer that accepts every TOC as an empty layer."""

    def __init__(self) -> None:  # no binary needed
        self.serve = False

    def __call__(self, data: bytes) -> peers.PeerResult:
        return peers.PeerResult(True, output=b"/ 0 40755 1 0 0 0 0.0 - - -\n")


def test_an_unexplained_one_sided_acceptance_is_a_finding(mkcomposefs: Path) -> None:
    # compat refuses a bad digest; no row explains it
    toc = b'{"version":1,"entries":[{"type":"reg","name":"a","size":1,"digest":"sha256:12"}]}'
    verdict = compare_toc(toc, _TakesAnything())
    assert verdict.finding and "unexplained one-sided acceptance" in verdict.detail
    # and a document both read alike but into different images is one too
    verdict = compare_toc(b'{"version":1,"entries":[{"type":"dir","name":"d"}]}', _TakesAnything())
    assert verdict.finding and "images differ" in verdict.detail


def test_the_long_lived_peer_answers_as_the_one_shot_one(toc_peer: peers.TocPeer) -> None:
    if not os.access(peers.CSTORAGE_SERVE, os.X_OK):
        pytest.skip(f"not built: fuzz/peers/build-serve.sh ({peers.CSTORAGE_SERVE})")
    serve = peers.TocPeer()
    one_shot = peers.TocPeer()
    one_shot.serve = False
    inputs = [*TOC_EXAMPLES.values(), b"[", b"", b'{"version":1,"entries":[{"type":"bad"}]}']
    inputs += [p.read_bytes() for p in sorted((REPO / "fuzz/corpus/toc_diff").iterdir())]
    for data in inputs:
        assert serve(data) == one_shot(data), data[:200]
    serve.close()


# Found by toc_diff: an unknown key holding a lone surrogate escape made the
# typed decoder refuse its entry; the entry had no problem of its own, and
# parse_toc went on as if it had one: every entry after it was dropped
# without a word (podman, reading them, refused a later typeless entry).
_SURROGATE_KEY = (
    b'{"version":1,"entries":[{"type":"reg","name":"a","x\\ud800y":1},'
    b'{"type":"reg","name":"b"},{"type":"dir","name":"d"}]}'
)


@pytest.mark.parametrize("compat", [None, "containers-storage"])
def test_an_unknown_key_with_a_lone_surrogate_drops_no_entry(compat: str | None) -> None:
    from composefs_py import parse_toc

    assert list(parse_toc(_SURROGATE_KEY, compat=compat).paths) == [b"/", b"/a", b"/b", b"/d"]


def test_an_entry_after_the_surrogate_key_is_still_checked(mkcomposefs: Path) -> None:
    from composefs_py import ValidationError, parse_toc

    toc = _SURROGATE_KEY.replace(b'{"type":"dir","name":"d"}', b'{"name":"c"}')
    with pytest.raises(ValidationError, match="type"):
        parse_toc(toc, compat="containers-storage")


# Found by toc_diff (the native writer failed with EEXIST on a Tree parse_toc
# had taken): a regular file "d" and an entry two levels below it, "d/e/f".
# The parents made up for "d/e/f" included "/d", the file's path: the Tree
# held "/d" twice, a file and a directory.
@pytest.mark.parametrize("compat", [None, "containers-storage"])
@pytest.mark.parametrize("file", ["d", "d/", "a/d"])
def test_a_file_is_not_made_up_again_as_a_grandparent(compat: str | None, file: str) -> None:
    from composefs_py import ValidationError, parse_toc

    below = file.rstrip("/") + "/e/f"
    toc = b'{"version":1,"entries":[{"type":"reg","name":"%s"},{"type":"reg","name":"%s"}]}' % (
        file.encode(),
        below.encode(),
    )
    with pytest.raises(ValidationError, match="parent is not a directory"):
        tree = parse_toc(toc, compat=compat)
        paths = list(tree.paths)
        assert len(paths) == len(set(paths)), f"a path twice: {paths}"


# Found by toc_diff: padding after a complete base64 quantum ("AAAA==") passed
# binascii's strict mode; Go's decoder (podman) refuses it, and so does RFC 4648.
@pytest.mark.parametrize("compat", [None, "containers-storage"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [("AAAA==", False), ("AAAA=", False), ("AAAA====", False), ("AAAAA===", False),
     ("AAAA", True), ("AA==", True), ("AAA=", True), ("AAAAAA==", True), ("", True)],
)  # fmt: skip
def test_xattr_base64_padding_only_after_a_partial_quantum(
    compat: str | None, value: str, ok: bool
) -> None:
    from composefs_py import ValidationError, parse_toc

    toc = (
        b'{"version":1,"entries":[{"type":"reg","name":"a","xattrs":{"user.a":"%s"}}]}'
        % value.encode()
    )
    if ok:
        parse_toc(toc, compat=compat)
    else:
        with pytest.raises(ValidationError, match="base64"):
            parse_toc(toc, compat=compat)


# mkcomposefs's fork server.  Test-only inputs: valid dumpfiles (a root
# alone, told apart by its mtime) that the server's --test-crash and
# --test-hang options turn into a child killed by SIGSEGV and a child that
# never ends; every other input runs mkcomposefs's main as usual.
_CRASHES = b"/ 0 40755 1 0 0 0 11.0 - - -\n"
_HANGS = b"/ 0 40755 1 0 0 0 12.0 - - -\n"
_BUILD = REPO / "fuzz" / "peers" / "build-mkcomposefs-serve.sh"


@pytest.fixture(scope="module")
def fork_server(tmp_path_factory: pytest.TempPathFactory, mkcomposefs: Path) -> Path:
    out = tmp_path_factory.mktemp("peers")
    done = subprocess.run([str(_BUILD), "", "", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the fork server does not build here: {done.stderr.strip()[-500:]}")
    return out / "mkcomposefs-serve"


@pytest.fixture
def served(fork_server: Path) -> Iterator[peers.MkcomposefsPeer]:
    tests = ["--test-crash", _CRASHES.decode(), "--test-hang", _HANGS.decode()]
    peer = peers.MkcomposefsPeer(fork_server, timeout=1, serve_args=tests)
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def one_shot(mkcomposefs: Path) -> peers.MkcomposefsPeer:
    return peers.MkcomposefsPeer(None, mkcomposefs)


def _differential_cases() -> list[bytes]:
    corpus = [p.read_bytes() for p in sorted((REPO / "fuzz/corpus/dumpfile_diff").iterdir())]
    crashes = [p.read_bytes() for p in sorted((REPO / "fuzz/crashes/dumpfile_diff").iterdir())]
    odd = [b"", b"bad line\n", b"/ 0 40755 2 0 0 0 0.0 - - -\n" * 2, b"\xff" * 70000]
    return [*DUMPFILE_EXAMPLES.values(), *corpus, *crashes, *odd]


def test_the_fork_server_answers_as_mkcomposefs(
    served: peers.MkcomposefsPeer, one_shot: peers.MkcomposefsPeer
) -> None:
    cases = _differential_cases()
    answers = [served(data) for data in cases]
    assert answers == [one_shot(data) for data in cases]
    # refusals with mkcomposefs's own words, and images
    assert any(not a.ok and a.error.startswith("mkcomposefs: ") for a in answers)
    assert any(a.ok and a.output for a in answers)
    assert not any(a.crashed for a in answers)


def test_the_fork_server_gives_the_same_verdicts(
    served: peers.MkcomposefsPeer, one_shot: peers.MkcomposefsPeer
) -> None:
    verdicts = []
    for data in _differential_cases():
        verdict = compare_dumpfile(data, served)
        assert verdict == compare_dumpfile(data, one_shot), data[:200]
        verdicts.append(verdict.outcome)
    assert {"both accept", "both refuse", "explained"} <= set(verdicts)


@pytest.fixture(scope="module")
def plain_server(fork_server: Path) -> Iterator[peers.MkcomposefsPeer]:
    peer = peers.MkcomposefsPeer(fork_server)
    yield peer
    peer.close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=_dumpfile_cases())
def test_the_fork_server_answers_as_mkcomposefs_on_generated_dumpfiles(
    data: bytes, plain_server: peers.MkcomposefsPeer, one_shot: peers.MkcomposefsPeer
) -> None:
    assert plain_server(data) == one_shot(data), data[:2000]


def test_a_child_killed_by_a_signal_is_a_crash(served: peers.MkcomposefsPeer) -> None:
    crashed = served(_CRASHES)
    # the words a mkcomposefs process killed by the same signal gets
    assert crashed == peers._run(["sh", "-c", "kill -SEGV $$"], b"")
    assert crashed.crashed and crashed.error.startswith("killed by SIGSEGV")
    verdict = compare_dumpfile(_CRASHES, served)
    assert verdict.finding and "mkcomposefs crashed: killed by SIGSEGV" in verdict.detail
    # the server itself lives on
    assert served(DUMPFILE_EXAMPLES["final_newline"]).ok


def test_a_child_that_hangs_times_out(
    served: peers.MkcomposefsPeer, one_shot: peers.MkcomposefsPeer
) -> None:
    hung = served(_HANGS)
    assert hung == peers._run(["sleep", "30"], b"", timeout=1)
    assert hung == peers.PeerResult(False, error="timeout after 1 s", crashed=True)
    verdict = compare_dumpfile(_HANGS, served)
    assert verdict.finding and "mkcomposefs crashed: timeout" in verdict.detail
    assert served(_HANGS[:-1]) == one_shot(_HANGS[:-1])


def test_the_fork_server_is_only_the_default_where_it_stands_for_the_tool(
    monkeypatch: pytest.MonkeyPatch, fork_server: Path, tmp_path: Path
) -> None:
    monkeypatch.setattr(peers, "MKCOMPOSEFS_SERVE", fork_server)
    monkeypatch.delenv("COMPOSEFS_PY_MKCOMPOSEFS_SERVE", raising=False)
    monkeypatch.delenv("COMPOSEFS_PREFIX", raising=False)
    bundled = peers.find_mkcomposefs() == peers._BUNDLED_MKCOMPOSEFS
    assert peers.MkcomposefsPeer.default_server() == (fork_server if bundled else None)
    # another mkcomposefs (COMPOSEFS_PREFIX): the server is not built like it
    other = tmp_path / "other"
    (other / "bin").mkdir(parents=True)
    (other / "bin" / "mkcomposefs").symlink_to(peers._BUNDLED_MKCOMPOSEFS)
    monkeypatch.setenv("COMPOSEFS_PREFIX", str(other))
    assert peers.MkcomposefsPeer.default_server() is None
    assert peers.MkcomposefsPeer().serve is None
    # turned off
    monkeypatch.delenv("COMPOSEFS_PREFIX")
    monkeypatch.setenv("COMPOSEFS_PY_MKCOMPOSEFS_SERVE", "")
    assert peers.MkcomposefsPeer.default_server() is None


@pytest.mark.parametrize("bad", ["source", "prefix", "version"])
def test_the_fork_server_build_says_why_it_cannot_build(bad: str, tmp_path: Path) -> None:
    src, prefix = REPO / ".deps/src/composefs", REPO / ".deps/prefix"
    if not (src / "tools/mkcomposefs.c").is_file() or not (prefix / ".version").is_file():
        pytest.skip("no libcomposefs built by scripts/bootstrap.sh")
    if bad == "source":
        src = tmp_path / "nowhere"
    elif bad == "prefix":
        prefix = tmp_path / "nowhere"
    else:
        # a prefix of another version, for the same source
        (tmp_path / "lib").mkdir()
        (tmp_path / "lib" / "libcomposefs.so").touch()
        (tmp_path / ".version").write_text("0.9\n")
        prefix = tmp_path
    done = subprocess.run(
        [str(_BUILD), str(src), str(prefix), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert {"source": "no composefs source", "prefix": "no libcomposefs prefix",
            "version": "holds libcomposefs 0.9, the source is"}[bad] in done.stderr  # fmt: skip
    assert not (tmp_path / "out" / "mkcomposefs-serve").exists()


# Found by dumpfile_diff: mkcomposefs reads only PATH, MODE and PAYLOAD on a
# hardlink line, and looks a hardlink target up skipping every run of '/'
# ('/d/' is the directory /d, '//' the root).  The rows that explain these
# explain nothing else: the same field on another line, or a clean target
# that names nothing, mkcomposefs refuses too.
def test_the_hardlink_rows_explain_only_hardlink_lines_and_unclean_targets(
    mkcomposefs: Path,
) -> None:
    fields = DUMPFILE_EXAMPLES["hardlink_fields"]
    regular = fields.replace(b"@100644 1 0 0 0 0.0 /f", b"100644 1 0 0 0 0.0 -")
    assert regular != fields and compare_dumpfile(regular).outcome == "both refuse"
    missing = DUMPFILE_EXAMPLES["hardlink_target"].replace(b"d//f - -", b"/d/g - -")
    assert compare_dumpfile(missing).outcome == "both refuse"
    for target in (b"/d/", b"//", b"/d//f", b"d/f"):
        text = DUMPFILE_EXAMPLES["hardlink_target"].replace(b"d//f - -", target + b" - -")
        verdict = compare_dumpfile(text)
        assert verdict.difference is not None, (target, verdict)
        assert verdict.difference.label == "hardlink_target"
