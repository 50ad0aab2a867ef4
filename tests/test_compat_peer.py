"""``compat="containers-storage"`` against podman's own code, differentially.

The peer is containers/storage's ``unmarshalToc`` + ``GenerateDump`` piped
into ``mkcomposefs --from-file - -`` (``cstorage-toc2dump -exec``, built by
``../shared/peers/containers-storage/setup.sh .deps/cstorage``).  A
Hypothesis property runs both sides on the same TOC: a valid TOC from the
package's strategies (entries shuffled, so parents often come after their
children), with up to three edge cases applied.  Where both accept, the
images are byte-identical; where exactly one accepts, an applied edge case
must be one of :data:`DIFFERENCES` (mirrored in the README's compat
paragraph), with that side refusing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs_py import ValidationError, parse_toc, write_image
from composefs_py.strategies import Pairs, render_json, tree_to_toc, trees

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # the fuzz package lives at the top of the checkout
    sys.path.insert(0, str(_REPO))

from fuzz.differential import TOC_DIFFERENCES  # noqa: E402
from fuzz.peers import CSTORAGE_PEER as _PEER  # noqa: E402
from fuzz.peers import peer_image as _peer_image  # noqa: E402

_D1 = "sha256:" + "1" * 64
_D2 = "sha256:" + hashlib.sha256(b"two").hexdigest()


def _entry_with(draw: Any, doc: dict[str, Any], *types: str) -> dict[str, Any]:
    found = [e for e in doc["entries"] if e.get("type") in types] if types else doc["entries"]
    if found:
        entry: dict[str, Any] = draw(st.sampled_from(found))
        return entry
    entry = {"type": types[0] if types else "reg", "name": "extra" + types[0] if types else "x"}
    if entry["type"] == "symlink":
        entry["linkName"] = "t"
    doc["entries"].append(entry)
    return entry


def _add(doc: dict[str, Any], draw: Any, entry: dict[str, Any]) -> None:
    doc["entries"].insert(draw(st.integers(0, len(doc["entries"]))), entry)


def _edge(draw: Any, doc: dict[str, Any], label: str) -> Any:
    """Apply the edge case ``label`` to ``doc`` (may return a Pairs-rendered document)."""
    entries = doc["entries"]
    if label == "dotdot_inside":
        target = _entry_with(draw, doc)
        name = target["name"].strip("/") or "x"
        target["name"] = draw(st.sampled_from(["zz/../", "./q/..//", "a/b/../../"])) + name
    elif label == "dotdot_above":
        _add(doc, draw, {"type": "reg", "name": draw(st.sampled_from(["../x", "a/../../y"]))})
    elif label in ("hardlink_spelled", "hardlink_same"):
        base = draw(st.sampled_from(["hl/t", "t"]))
        spell = ["./" + base, "/" + base, base] if label == "hardlink_spelled" else [base]
        _add(doc, draw, {"type": "reg", "name": draw(st.sampled_from(spell)), "size": 3,
                         "digest": _D1, "mode": 0o644})  # fmt: skip
        for i in range(draw(st.integers(1, 3))):
            entries.append({"type": "hardlink", "name": f"h{i}",
                            "linkName": draw(st.sampled_from(spell))})  # fmt: skip
        if draw(st.booleans()):
            entries.append({"type": "symlink", "name": "sy", "linkName": spell[-1]})
    elif label == "repeat_same":
        _add(doc, draw, copy.deepcopy(draw(st.sampled_from(entries))) if entries else {})
    elif label == "repeat_differ":
        if entries:
            twin = copy.deepcopy(draw(st.sampled_from(entries)))
            key = draw(st.sampled_from(["mode", "uid", "accesstime", "name", "offset"]))
            twin[key] = {"mode": 0o700, "uid": 7, "offset": 9, "accesstime": "2001-01-01T00:00:00Z",
                         "name": "./" + twin["name"]}[key]  # fmt: skip
            _add(doc, draw, twin)
    elif label == "root_entry":
        root: dict[str, Any] = {"type": "dir", "name": draw(st.sampled_from(["./", "/", "", "."]))}
        if draw(st.booleans()):
            root = {"type": "dir", "name": "/", "mode": 493}
        else:
            root["mode"] = draw(st.sampled_from([0o755, 0o700]))
        _add(doc, draw, root)
    elif label == "version":
        if draw(st.booleans()):
            doc["version"] = 2
        else:
            del doc["version"]
    elif label == "key_case":
        entry = _entry_with(draw, doc)
        key = draw(st.sampled_from(["Name", "TYPE", "Mode", "linkname", "Version"]))
        if key == "Version":
            doc["Version"] = 1
        else:
            entry[key] = entry.get(key.lower(), "x") if key != "Mode" else 0o700
    elif label == "empty_key":
        (doc if draw(st.booleans()) else _entry_with(draw, doc))[""] = 1
    elif label == "duplicate_key":
        entry = _entry_with(draw, doc)
        i = entries.index(entry)
        entries[i] = Pairs((*entry.items(), ("uid", 5)))
    elif label == "unknown_type":
        _entry_with(draw, doc)["type"] = draw(st.sampled_from(["socket", "REG", ""]))
    elif label == "bad_digest":
        entry = _add_reg(doc, draw, size=5)
        bad = ["sha256:" + "A" * 64, "sha512:" + "1" * 128, "sha256:12", "md5:" + "1" * 32]
        entry["digest"] = draw(st.sampled_from(bad))
    elif label == "empty_file_digest":
        entry = _add_reg(doc, draw, size=0)
        choice = draw(st.integers(0, 2))
        if choice == 0:
            entry["digest"] = _D2
        elif choice == 1:
            entry.pop("digest", None)
        else:
            entry["digest"] = "sha256:" + hashlib.sha256(b"").hexdigest()
    elif label == "digest_other":
        entry = _entry_with(draw, doc, draw(st.sampled_from(["dir", "symlink", "char", "fifo"])))
        entry["digest"] = _D1
    elif label == "size_other":
        entry = _entry_with(draw, doc, draw(st.sampled_from(["dir", "symlink", "char", "fifo"])))
        entry["size"] = draw(st.sampled_from([1, 4096, 77]))
    elif label == "device_other":
        entry = _entry_with(draw, doc, draw(st.sampled_from(["reg", "dir", "symlink", "fifo"])))
        entry["devMajor"], entry["devMinor"] = 1, 3
    elif label == "device_range":
        entry = _entry_with(draw, doc, "char")
        entry["devMajor"] = 5000
    elif label == "xattr_ok":
        entry = _entry_with(draw, doc)
        entry["xattrs"] = {"user.a": draw(st.sampled_from(["", "eA==", "AAEC"])),
                           "security.x": "dmFsdWU="}  # fmt: skip
    elif label == "xattr_name":
        _entry_with(draw, doc)["xattrs"] = {"system.foo": "eA=="}
    elif label == "xattr_value":  # Go's decoder skips newlines; both refuse bad padding
        _entry_with(draw, doc)["xattrs"] = {"user.a": draw(st.sampled_from(["eA=\n=", "eA"]))}
    elif label == "trusted_overlay":
        _entry_with(draw, doc)["xattrs"] = {"trusted.overlay.redirect": "eA=="}
    elif label == "time_offset":
        _entry_with(draw, doc)["modtime"] = draw(st.sampled_from([
            "2020-02-29T23:59:59+01:30", "2020-01-01T00:00:00-23:59", "0001-01-01T00:00:00Z",
            "2020-01-01T00:00:00.1234567891Z", "9999-12-31T23:59:59.999999999Z"]))  # fmt: skip
    elif label == "time_refused":
        _entry_with(draw, doc)["modtime"] = draw(st.sampled_from([
            "2020-01-01t00:00:00z", "2020-01-01T00:00:60Z", "2020-01-01T24:00:00Z", "",
            "2020-02-30T00:00:00Z"]))  # fmt: skip
    elif label == "time_lenient":
        _entry_with(draw, doc)["modtime"] = draw(st.sampled_from(
            ["2020-01-01T00:00:00,5Z", "2020-01-01T00:00:00+24:00"]))  # fmt: skip
    elif label == "time_missing":
        _entry_with(draw, doc).pop("modtime", None)
    elif label == "mode_bits":
        entry = _entry_with(draw, doc, "dir")
        entry["mode"] = 0o100644
    elif label == "ids":
        _entry_with(draw, doc)[draw(st.sampled_from(["uid", "gid"]))] = draw(
            st.sampled_from([-1, 4294967295, 4294967296]))  # fmt: skip
    elif label == "reg_no_digest":
        _add_reg(doc, draw, size=9).pop("digest")
    elif label == "linkname_other":
        _entry_with(draw, doc, draw(st.sampled_from(["reg", "dir", "fifo"])))["linkName"] = "x/y"
    elif label == "null_string":
        _entry_with(draw, doc, "reg")[draw(st.sampled_from(["linkName", "digest"]))] = None
    elif label == "nul_name":
        _add(doc, draw, {"type": "reg", "name": "a\0b"})
    return doc


def _add_reg(doc: dict[str, Any], draw: Any, *, size: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "reg", "name": draw(st.sampled_from(["r1", "r2/x"])),
                             "mode": 0o644, "size": size, "digest": _D1}  # fmt: skip
    if not size:
        entry.pop("size")
    _add(doc, draw, entry)
    return entry


EDGES = (
    "dotdot_inside", "dotdot_above", "hardlink_spelled", "hardlink_same", "repeat_same",
    "repeat_differ", "root_entry", "version", "key_case", "empty_key", "duplicate_key",
    "unknown_type", "bad_digest", "empty_file_digest", "digest_other", "size_other",
    "device_other", "device_range", "xattr_ok", "xattr_name", "xattr_value", "trusted_overlay",
    "time_offset", "time_refused", "time_lenient", "time_missing", "mode_bits", "ids",
    "reg_no_digest", "linkname_other", "null_string", "nul_name",
)  # fmt: skip

#: The deliberate differences: edge case -> (the side that refuses, compat's refusing
#: fields, why), from the one table fuzz/differential.py keeps (the toc_diff fuzz target
#: classifies with it too).  "compat" refuses what podman takes; "podman" refuses what
#: compat takes.
DIFFERENCES: dict[str, tuple[str, frozenset[str | None], str]] = {
    row.label: (row.refuser, row.fields, row.why) for row in TOC_DIFFERENCES
}


@st.composite
def peer_cases(draw: Any) -> tuple[bytes, tuple[str, ...]]:
    """A TOC (a valid one from the strategies, with up to three edge cases) and its labels."""
    tree = draw(trees(max_entries=8, toc_compatible=True))
    doc = draw(tree_to_toc(tree, flavour="zstd:chunked"))
    if draw(st.booleans()):  # parents first (stable: chunks stay after their file)
        doc["entries"].sort(key=lambda e: len([p for p in e["name"].split("/") if p.strip(".")]))
    labels = tuple(draw(st.lists(st.sampled_from(EDGES), max_size=3, unique=True)))
    for label in sorted(labels, key="duplicate_key".__eq__):  # it turns an entry into Pairs
        doc = _edge(draw, doc, label)
    return render_json(doc, indent=draw(st.sampled_from([None, 1]))), labels


def _explained(labels: tuple[str, ...], refuser: str, field: str | None) -> bool:
    for label in labels:
        row = DIFFERENCES.get(label)
        if row is not None and row[0] == refuser and (refuser == "podman" or field in row[1]):
            return True
    # a chunk chain a later edge case broke (an entry inserted inside it) is the same row
    return refuser == "compat" and field in DIFFERENCES["chunk_rows"][1] and bool(labels)


@pytest.fixture(scope="module")
def peer() -> Path:
    if not os.access(_PEER, os.X_OK):
        pytest.skip(
            f"the containers/storage peer is not built ({_PEER}): run "
            "../shared/peers/containers-storage/setup.sh .deps/cstorage"
        )
    return _PEER


@settings(
    max_examples=int(os.environ.get("COMPAT_PEER_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=peer_cases())
def test_compat_matches_podman(
    case: tuple[bytes, tuple[str, ...]], peer: Path, mkcomposefs: Path, composefs_info: Path
) -> None:
    data, labels = case
    with tempfile.TemporaryDirectory(prefix="cfspy-peer-") as tmp:
        toc, theirs, ours = Path(tmp, "toc.json"), Path(tmp, "peer.cfs"), Path(tmp, "ours.cfs")
        toc.write_bytes(data)
        peer_ok, peer_error = _peer_image(toc, theirs, mkcomposefs)
        try:
            tree = parse_toc(data, compat="containers-storage")
        except ValidationError as error:
            if peer_ok:
                assert _explained(labels, "compat", error.field), (
                    f"compat refuses what podman takes, undocumented: {error} (field "
                    f"{error.field!r}; edge cases {labels})\n{data.decode(errors='replace')}"
                )
            return
        if not peer_ok:
            assert _explained(labels, "podman", None), (
                f"compat takes what podman refuses ({peer_error}); edge cases {labels}\n"
                + data.decode(errors="replace")
            )
            return
        write_image(tree, ours)
        if ours.read_bytes() != theirs.read_bytes():
            dumps = [
                subprocess.run(
                    [str(composefs_info), "dump", str(image)], capture_output=True
                ).stdout.decode(errors="replace")
                for image in (theirs, ours)
            ]
            pytest.fail(
                f"images differ; edge cases {labels}\n{data.decode(errors='replace')}\n"
                f"-- podman:\n{dumps[0]}-- compat:\n{dumps[1]}"
            )


def test_differences_are_in_the_readme() -> None:
    """Each deliberate difference has its line in the README's compat paragraph, or (those
    only the toc_diff fuzz target reaches) in fuzz/CAMPAIGNS.md's table."""
    readme = (_REPO / "README.md").read_text()
    campaigns = (_REPO / "fuzz" / "CAMPAIGNS.md").read_text()
    for label in DIFFERENCES:
        assert f"`{label}`" in readme or f"`{label}`" in campaigns, label


def _toc(*entries: dict[str, Any]) -> bytes:
    return render_json({"version": 1, "entries": list(entries)})


_REG = {"type": "reg", "name": "a", "size": 3, "digest": _D1}
#: Cases pinned: (name, TOC); both sides must agree, but for those of _DOCUMENTED.
PINNED = [
    ("hardlink target spelled otherwise keeps one link",
     _toc({**_REG, "name": "./a"}, {"type": "hardlink", "name": "b", "linkName": "a"},
          {"type": "hardlink", "name": "c", "linkName": "/a"})),
    ("hardlinks spelled alike count",
     _toc(_REG, {"type": "hardlink", "name": "b", "linkName": "a"},
          {"type": "symlink", "name": "s", "linkName": "a"})),
    ("root entry after other entries", _toc(_REG, {"type": "dir", "name": "./", "mode": 0o700})),
    ("root entry after others, equal to the made-up one",
     _toc(_REG, {"type": "dir", "name": "/", "mode": 0o755})),
    ("directory after its child", _toc({**_REG, "name": "d/a"}, {"type": "dir", "name": "d/"})),
    ("repeat with another spelling", _toc(_REG, {**_REG, "name": "./a"})),
    ("repeat with an offset", _toc(_REG, {**_REG, "offset": 5})),
    ("digest on a directory", _toc({"type": "dir", "name": "d", "digest": _D1})),
    ("bad digest on a directory", _toc({"type": "dir", "name": "d", "digest": "sha256:12"})),
    ("size on a symlink", _toc({"type": "symlink", "name": "s", "linkName": "t", "size": 9})),
    ("device numbers on a file", _toc({**_REG, "devMajor": 1, "devMinor": 3})),
    ("empty file with another digest", _toc({"type": "reg", "name": "e", "digest": _D2})),
    ("'..' inside the root", _toc({**_REG, "name": "x/../a"},
                                  {"type": "hardlink", "name": "h", "linkName": "q/../a"})),
    ("lower-case t and z", _toc({**_REG, "modtime": "2020-01-01t00:00:00z"})),
    ("fraction past nanoseconds", _toc({**_REG, "modtime": "2020-01-01T00:00:00.1234567891Z"})),
    ("a known key in another case", _toc({**_REG, "Mode": 0o700})),
    ("an empty key", _toc({**_REG, "": 1})),
    ("linkName on a chunk", _toc({**_REG, "chunkSize": 1},
                                 {"type": "chunk", "name": "a", "chunkOffset": 1, "chunkSize": 2,
                                  "linkName": "a"})),
    ("xattrs at mkcomposefs's line cap",
     _toc({**_REG, "xattrs": {"user.a": base64.b64encode(b"\xff" * 16382).decode()}})),
    ("xattrs past mkcomposefs's line cap",
     _toc({**_REG, "xattrs": {"user.a": base64.b64encode(b"\xff" * 16383).decode()}})),
    ("xattr value with a newline", _toc({**_REG, "xattrs": {"user.a": "eA=\r\n="}})),
    ("landmark file kept", _toc({"type": "reg", "name": ".prefetch.landmark", "size": 1,
                                 "digest": _D1})),
]  # fmt: skip


#: Pinned cases compat refuses and podman takes: the row of DIFFERENCES that says why.
_DOCUMENTED = {"a known key in another case": "key_case", "linkName on a chunk": "linkname_other"}


@pytest.mark.parametrize(("name", "data"), PINNED, ids=[name for name, _ in PINNED])
def test_compat_agrees_with_podman_on(
    name: str, data: bytes, peer: Path, mkcomposefs: Path, tmp_path: Path
) -> None:
    toc, theirs, ours = tmp_path / "toc.json", tmp_path / "peer.cfs", tmp_path / "ours.cfs"
    toc.write_bytes(data)
    peer_ok, peer_error = _peer_image(toc, theirs, mkcomposefs)
    try:
        write_image(parse_toc(data, compat="containers-storage"), ours)
    except ValidationError as error:
        if name in _DOCUMENTED:
            assert peer_ok and error.field in DIFFERENCES[_DOCUMENTED[name]][1]
            return
        assert not peer_ok, f"compat refuses ({error}), podman takes it"
        return
    assert name not in _DOCUMENTED
    assert peer_ok, f"compat takes it, podman refuses: {peer_error}"
    assert ours.read_bytes() == theirs.read_bytes()


def _made_up_parents(n: int) -> bytes:
    """``n`` files each below 48 directories no entry gives (each made up), then the top
    directory of each as containers/storage makes it up (an entry after its children)."""
    entries: list[dict[str, Any]] = [
        {"type": "reg", "name": f"s{i}/" + "d/" * 48 + "f"} for i in range(n)
    ]
    entries += [{"type": "dir", "name": f"/s{i}", "mode": 0o755} for i in range(n)]
    return _toc(*entries)


def _parse_compat(data: bytes) -> None:
    parse_toc(data, compat="containers-storage")


def test_compat_order_check_costs_linear_on_made_up_parents() -> None:
    from cost import growth

    # (quadratic would be 16; the default mode's own ratio on this shape is about 5.6)
    small, large, ratio = growth(_parse_compat, _made_up_parents, 500, 4, most=8.0)
    assert ratio < 8.0, f"4x the entries: {small:.3f} s -> {large:.3f} s (ratio {ratio:.1f})"
