"""composefs_py.dumpfile: the composefs-dump(5) validator and writer.

The oracles are upstream's own: its test assets (``should-fail-*`` must be
rejected, the others parsed), and ``mkcomposefs`` + ``composefs-info dump``,
whose output our :func:`dump` reproduces byte for byte.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_upstream_assets import OPT_INS

from composefs_py.dumpfile import FIELDS, dump, dump_bytes, parse_dumpfile
from composefs_py.errors import ValidationError
from composefs_py.limits import Limits
from composefs_py.model import Hardlink, Inode, Tree, TreeBuilder

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "sample.dump"

ROOT = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
DIGEST = "0123456789abcdef" * 4

#: Upstream's non-strict assets (tests/test-checksums.sh).
NONSTRICT = frozenset({"no-newline.dump", "longlink.dump", "honggfuzz-longlink-unterminated.dump"})
#: An object name (a payload the model takes without an opt-in).
PAYLOAD = b"ab/" + b"cd" * 31
#: Every opt-in: payloads that are no object names, trusted.overlay.* xattrs.
OPEN = Limits(allow_foreign_payloads=True, allow_overlay_xattrs=True)


def line(
    path: bytes = b"/f",
    size: bytes = b"0",
    mode: bytes = b"100644",
    nlink: bytes = b"1",
    uid: bytes = b"0",
    gid: bytes = b"0",
    rdev: bytes = b"0",
    mtime: bytes = b"0.0",
    payload: bytes = b"-",
    content: bytes = b"-",
    digest: bytes = b"-",
    xattrs: tuple[bytes, ...] = (),
) -> bytes:
    fields = [path, size, mode, nlink, uid, gid, rdev, mtime, payload, content, digest]
    return b" ".join([*fields, *xattrs]) + b"\n"


def parse_one(limits: Limits | None = None, **fields: Any) -> Inode:
    """Parse the root plus one line built from ``fields``; return its inode."""
    path = fields.get("path", b"/f")
    tree = parse_dumpfile(ROOT + line(**fields), limits=limits)
    node = tree[path.replace(b"\\x20", b" ")]
    assert isinstance(node, Inode)
    return node


def rejected(text: bytes | str, *, strict: bool = True) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_dumpfile(text, strict=strict)
    return info.value


def assert_rejects(
    text: bytes, field: str | None, entry: int | None = 2, *, strict: bool = True
) -> ValidationError:
    err = rejected(text, strict=strict)
    assert err.field == field, str(err)
    assert err.entry == entry, str(err)
    return err


def composefs_info_dump(info: Path, image: bytes) -> str:
    with tempfile.NamedTemporaryFile(prefix="cfspy-dump-", suffix=".cfs") as file:
        file.write(image)
        file.flush()
        out = subprocess.run([str(info), "dump", file.name], check=True, capture_output=True).stdout
    return out.decode("ascii")


# -- escapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "raw"),
    [
        (b"\\\\", b"\\"),
        (b"\\n", b"\n"),
        (b"\\r", b"\r"),
        (b"\\t", b"\t"),
        (b"\\x20", b" "),
        (b"\\x3d", b"="),
        (b"\\x3D", b"="),
        (b"\\xff", b"\xff"),
        (b"\\xFf", b"\xff"),
        (b"\\x2d", b"-"),
        (b"\\x5c", b"\\"),
        (b"\\\\x41", b"\\x41"),
        (b"a\\x00b", b"a\x00b"),
    ],
)
def test_every_escape_decodes_in_every_escaped_field(escaped: bytes, raw: bytes) -> None:
    # content and xattr values may hold any byte, NUL included
    node = parse_one(size=str(len(raw)).encode(), content=escaped, xattrs=(b"user.k=" + escaped,))
    assert node.content == raw
    assert node.xattrs == ((b"user.k", raw),)
    if b"\0" not in raw:
        node = parse_one(xattrs=(b"user.k" + escaped + b"=1",))
        assert node.xattrs == ((b"user.k" + raw, b"1"),)
        link = parse_one(path=b"/l", mode=b"120777", size=str(len(raw)).encode(), payload=escaped)
        assert link.symlink_target == raw
        # (a payload is an object name: any other only with the opt-in)
        assert parse_one(OPEN, size=b"5", payload=b"ab/" + escaped).payload == b"ab/" + raw
    if b"/" not in raw and b"\0" not in raw:
        tree = parse_dumpfile(ROOT + line(path=b"/n" + escaped))
        assert b"/n" + raw in tree


def test_raw_bytes_above_ascii_are_taken_as_they_are() -> None:
    tree = parse_dumpfile(ROOT + line(path="/grüße".encode(), xattrs=("user.ü=ö".encode(),)))
    node = tree["/grüße".encode()]
    assert isinstance(node, Inode)
    assert node.xattrs == (("user.ü".encode(), "ö".encode()),)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (line(path=b"/a\\q"), "path"),
        (line(path=b"/a\\"), "path"),
        (line(path=b"/a\\x"), "path"),
        (line(path=b"/a\\x4"), "path"),
        (line(path=b"/a\\xg0"), "path"),
        (line(path=b"/a\\X41"), "path"),
        (line(size=b"1", content=b"\\a"), "content"),
        (line(size=b"1", payload=b"ab\\0"), "payload"),
        (line(digest=b"\\z" + DIGEST[2:].encode()), "digest"),
        (line(xattrs=(b"user.a\\b=1",)), "xattrs"),
        (line(xattrs=(b"user.a=1\\",)), "xattrs"),
    ],
)
def test_bad_escapes_are_rejected_naming_the_field(bad: bytes, field: str) -> None:
    err = assert_rejects(ROOT + bad, field)
    assert "escape" in err.reason


# -- numbers --------------------------------------------------------------------

U32 = 2**32 - 1
U64 = 2**64 - 1


@pytest.mark.parametrize(
    ("field", "good", "attribute", "value"),
    [
        ("uid", b"4294967295", "uid", U32),
        ("gid", b"4294967295", "gid", U32),
        ("nlink", b"4294967295", "nlink", U32),
        ("uid", b"007", "uid", 7),
        ("size", b"9007199254740992", "size", 2**53),
        ("mtime", b"-9223372036854775808.0", "mtime", -(2**63)),
        ("mtime", b"9223372036854775807.999999999", "mtime", 2**63 - 1),
        ("mtime", b"1.1", "mtime_nsec", 1),
        ("mtime", b"1.000000001", "mtime_nsec", 1),
        ("mode", b"0100644", "mode", 0o100644),
        ("mode", b"107777", "mode", 0o107777),
    ],
)
def test_numbers_at_the_edge_of_their_range_are_accepted(
    field: str, good: bytes, attribute: str, value: int
) -> None:
    assert getattr(parse_one(**{field: good}), attribute) == value


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        *[
            (name, value)
            for name in ("uid", "gid", "nlink")
            for value in (b"4294967296", b"-1", b"+1", b"0x1", b"1_0", b" 1", b"1e3", b"", b"x")
        ],
        *[
            ("size", value)
            for value in (b"18446744073709551616", b"-1", b"+0", b"1.0", b"9" * 5000, b"\xd9\xa1")
        ],
        *[("rdev", value) for value in (b"-1", b"ten", b"18446744073709551616")],
        *[
            ("mtime", value)
            for value in (
                b"0",
                b"0.",
                b".0",
                b"1.1000000000",
                b"1.-1",
                b"1.+1",
                b"--1.0",
                b"+1.0",
                b"9223372036854775808.0",
                b"-9223372036854775809.0",
                b"1.0.0",
                b"1,0",
                b"9" * 5000 + b".0",
            )
        ],
        *[
            ("mode", value)
            for value in (
                b"100648",
                b"-100644",
                b"1100644",
                b"170644",
                b"0",
                b"644",
                b"0x81a4",
                b"",
                b"@",
            )
        ],
    ],
)
def test_numbers_out_of_range_or_malformed_are_rejected(field: str, bad: bytes) -> None:
    assert_rejects(ROOT + line(**{field: bad}), field)  # type: ignore[arg-type]


def test_rdev_is_limited_to_the_32_bits_erofs_stores() -> None:
    assert parse_one(mode=b"20644", rdev=b"4294967295").rdev == U32
    # 2^32 would be written as device 0:0: an overlay whiteout
    assert_rejects(ROOT + line(mode=b"20644", rdev=b"4294967296"), "rdev")


def test_huge_numbers_do_not_reach_int_conversion_limits() -> None:
    for field in ("size", "uid", "nlink", "rdev"):
        err = assert_rejects(ROOT + line(**{field: b"1" * 100_000}), field)  # type: ignore[arg-type]
        assert len(str(err)) < 300


# -- strict rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (line(mode=b"100644", rdev=b"5"), "rdev"),
        (line(mode=b"40755", rdev=b"5"), "rdev"),
        (line(mode=b"10644", rdev=b"5"), "rdev"),
        (line(mode=b"120777", size=b"1", payload=b"x", rdev=b"5"), "rdev"),
        (line(mode=b"120777", size=b"2", payload=b"x"), "size"),
        (line(mode=b"120777", size=b"0", payload=b"x"), "size"),
        (line(size=b"4", content=b"abc"), "content"),
        (line(size=b"2", content=b"abc"), "content"),
        (line(size=b"5001", content=b"x" * 5001), "content"),
        (line(size=b"9007199254740993"), "size"),
        (line(digest=DIGEST[:-2].encode()), "digest"),
        (line(digest=DIGEST.encode() + b"00"), "digest"),
        (line(digest=DIGEST[:-1].encode() + b"g"), "digest"),
        (line(digest=DIGEST[:-2].encode() + b" \t"), "digest"),
        (line(digest=b"\xff" * 64), "digest"),
        (line(mode=b"40755", payload=b"ab/cd"), "payload"),
        (line(mode=b"20644", payload=b"ab/cd"), "payload"),
        (line(mode=b"10644", payload=b"ab/cd"), "payload"),
        (line(mode=b"140644", payload=b"ab/cd"), "payload"),
        (line(mode=b"40755", size=b"1", content=b"x"), "content"),
        (line(mode=b"120777", size=b"1", payload=b"x", content=b"x"), "content"),
        (line(mode=b"40755", digest=DIGEST.encode()), "digest"),
        (line(mode=b"120777", size=b"1", payload=b"x", digest=DIGEST.encode()), "digest"),
        (line(payload=b""), "payload"),
        (line(content=b""), "content"),
        (line(digest=b""), "digest"),
        (line(xattrs=(b"",)), "xattrs"),
        (line(xattrs=(b"user.a=1", b"")), "xattrs"),
        (line(xattrs=(b"user.a",)), "xattrs"),
        (line(xattrs=(b"user.a=1", b"user.a=2")), "xattrs"),
        (line(xattrs=(b"user.a=1", b"user.b=1", b"user.\\x61=3")), "xattrs"),
        (line(xattrs=(b"=v",)), "xattrs"),
        (line(xattrs=(b"user.a\\x00b=v",)), "xattrs"),
        (line(xattrs=(b"user." + b"a" * 251 + b"=v",)), "xattrs"),
        (line(xattrs=(b"user.a=" + b"v" * 65536,)), "xattrs"),
        (line(path=b"/a\\x00b"), "path"),
        (line(mode=b"120777", size=b"3", payload=b"a\\x00b"), "payload"),
        (line(size=b"3", payload=b"a\\x00b"), "payload"),
        (line(mode=b"120777", payload=b"-"), "payload"),
        (line(mode=b"@100644", payload=b"-"), "payload"),
        (line(mode=b"@40755", payload=b"/"), "mode"),
    ],
)
def test_strict_rules_reject_with_the_field_named(bad: bytes, field: str) -> None:
    assert_rejects(ROOT + bad, field)


def test_a_symlink_size_must_be_the_targets_length_in_bytes() -> None:
    node = parse_one(mode=b"120777", size=b"4", payload="ü\\x20x".encode())
    assert node.symlink_target == "ü x".encode()
    assert node.size == 0  # the image computes it


def test_embedded_nul_is_rejected_with_its_line_number() -> None:
    err = rejected(ROOT + line() + b"/g 0 100644 1 0 0 0 0.0 - - -\0\n")
    assert err.entry == 3
    assert "NUL" in err.reason


def test_missing_final_newline_is_rejected_in_strict_mode() -> None:
    err = rejected(ROOT + line()[:-1])
    assert err.entry == 2
    assert "newline" in err.reason


@pytest.mark.parametrize("count", range(1, 11))
def test_too_few_fields_names_the_first_missing_one(count: int) -> None:
    short = b" ".join(line().rstrip(b"\n").split(b" ")[:count]) + b"\n"
    err = assert_rejects(ROOT + short, FIELDS[count])
    assert "missing" in err.reason


@pytest.mark.parametrize(
    "garbage",
    [
        line().rstrip(b"\n") + b" \n",  # trailing space: an empty xattr
        line().rstrip(b"\n") + b"\r\n",  # CRLF
        line().replace(b" 0 ", b"  0 ", 1),  # double space
        b"\n",  # empty line
        b" \n",
    ],
)
def test_trailing_garbage_and_stray_separators_are_rejected(garbage: bytes) -> None:
    rejected(ROOT + garbage)
    rejected(ROOT + garbage + line(path=b"/g"))


def test_xattrs_are_sorted_by_name_bytes() -> None:
    node = parse_one(xattrs=(b"user.b=2", b"trusted.x=3", b"security.capability=\\x01", b"user.a="))
    assert [name for name, _ in node.xattrs] == [
        b"security.capability",
        b"trusted.x",
        b"user.a",
        b"user.b",
    ]
    assert dict(node.xattrs)[b"user.a"] == b""


def test_xattr_values_may_hold_a_raw_equals_sign() -> None:
    assert parse_one(xattrs=(b"user.a=b=c",)).xattrs == ((b"user.a", b"b=c"),)


def test_model_mapping_of_sizes_links_payloads_and_digests() -> None:
    text = (
        b"/ 4096 40755 77 1 2 0 5.6 - - -\n"
        + line(path=b"/d", mode=b"40700", size=b"123", nlink=b"9")
        + line(path=b"/c", mode=b"20600", size=b"1", rdev=b"259")
        + line(path=b"/f", size=b"10", nlink=b"3", payload=PAYLOAD, digest=DIGEST.upper().encode())
        + line(path=b"/h", mode=b"@100644", size=b"999", nlink=b"42", payload=b"/f")
        + line(path=b"/p", mode=b"10644", size=b"7")
    )
    tree = parse_dumpfile(text)
    root = tree.root
    assert (root.uid, root.gid, root.mtime, root.mtime_nsec) == (1, 2, 5, 6)
    assert root.nlink == 3  # 2 + one subdirectory: computed, as libcomposefs does
    assert tree.inode(b"/d").size == 0
    assert tree.inode(b"/c").size == 0
    assert tree.inode(b"/c").rdev == 259
    assert tree.inode(b"/p").size == 0
    regular = tree.inode(b"/f")
    assert (regular.size, regular.nlink, regular.payload) == (10, 3, PAYLOAD)
    assert regular.fsverity_digest == bytes.fromhex(DIGEST)
    assert tree[b"/h"] == Hardlink(b"/f")
    assert tree.inode(b"/h") == regular  # nlink is kept as given, not counted


# -- hostile lines -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field", "entry"),
    [
        (ROOT + line(path=b"/a/b"), "path", 2),
        (ROOT + line(path=b"/f") + line(path=b"/f"), "path", 3),
        (ROOT + ROOT, "path", 2),
        (ROOT + line(path=b"/.."), "path", 2),
        (ROOT + line(path=b"/."), "path", 2),
        (ROOT + line(path=b"/a/../b"), "path", 2),
        (ROOT + line(path=b"a"), "path", 2),
        (ROOT + line(path=b"/a/"), "path", 2),
        (ROOT + line(path=b"//a"), "path", 2),
        (ROOT + line(path=b"/" + b"n" * 256), "path", 2),
        (ROOT + line(path=b"/f") + line(path=b"/f/g"), "path", 3),
        (ROOT + line(path=b"/h", mode=b"@100644", payload=b"/h"), "payload", 2),
        (ROOT + line(path=b"/h", mode=b"@100644", payload=b"/nowhere"), "payload", 2),
        (ROOT + line(path=b"/h", mode=b"@100644", payload=b"h"), "payload", 2),
        (
            ROOT
            + line(path=b"/a", mode=b"@100644", payload=b"/b")
            + line(path=b"/b", mode=b"@100644", payload=b"/a"),
            "payload",
            2,
        ),
        (
            ROOT
            + line(path=b"/d", mode=b"40755")
            + line(path=b"/h", mode=b"@100644", payload=b"/d"),
            "payload",
            3,
        ),
        (ROOT + line(path=b"/h", mode=b"@100644", payload=b"/"), "payload", 2),
        (ROOT + line(path=b"/l", mode=b"120777", payload=b"-"), "payload", 2),
        (ROOT + line(path=b"/l", mode=b"120777", payload=b""), "payload", 2),
        (line(path=b"/f") + ROOT, "path", 1),
        (b"/ 0 100644 1 0 0 0 0.0 - - -\n", None, 1),
        (b"", None, None),
    ],
)
def test_hostile_trees_are_rejected(text: bytes, field: str | None, entry: int | None) -> None:
    assert_rejects(text, field, entry)


def test_hardlink_chains_resolve_to_the_inode() -> None:
    tree = parse_dumpfile(
        ROOT
        + line(path=b"/a", mode=b"@100644", payload=b"/b")
        + line(path=b"/b", mode=b"@100644", payload=b"/c")
        + line(path=b"/c", nlink=b"3")
    )
    inodes = {path: node for path, node in tree if isinstance(node, Inode)}
    assert len(inodes) == 2  # the root and the group's one inode
    (home,) = set(inodes) - {b"/"}
    assert inodes[home].nlink == 3  # kept as given
    for path in (b"/a", b"/b", b"/c"):
        assert path == home or tree[path] == Hardlink(home)
    assert dump(tree).splitlines()[1:] == [
        "/a 0 @100644 3 0 0 0 0.0 /c - -",
        "/b 0 @100644 3 0 0 0 0.0 /c - -",
        "/c 0 100644 3 0 0 0 0.0 - - -",
    ]


def test_a_hardlink_groups_inode_stays_where_the_input_put_it(
    run_mkcomposefs: Callable[..., bytes], composefs_info: Path
) -> None:
    """Which path holds the inode changes the image bytes: dump keeps it, so
    mkcomposefs writes the same image from our dump as from the input;
    composefs-info prints the group's first path as the inode (EROFS has no
    notion of which path came first)."""
    text = (
        ROOT
        + line(path=b"/a", mode=b"@100644", size=b"3", nlink=b"2", payload=b"/z")
        + line(path=b"/z", size=b"3", nlink=b"2", payload=PAYLOAD)
    )
    ours = dump_bytes(parse_dumpfile(text))
    assert ours.splitlines()[1:] == [
        b"/a 3 @100644 2 0 0 0 0.0 /z - -",
        b"/z 3 100644 2 0 0 0 0.0 " + PAYLOAD + b" - -",
    ]
    image = run_mkcomposefs(text)
    assert run_mkcomposefs(ours) == image
    swapped = (
        ROOT
        + line(path=b"/a", size=b"3", nlink=b"2", payload=b"ab/cdef")
        + line(path=b"/z", mode=b"@100644", size=b"3", nlink=b"2", payload=b"/a")
    )
    assert run_mkcomposefs(swapped) != image
    assert composefs_info_dump(composefs_info, image).splitlines()[2] == (
        "/z 3 @100644 2 0 0 0 0.0 /a - -"
    )


@pytest.mark.parametrize("strict", [True, False])
def test_nothing_but_validation_errors_escape_on_mangled_input(strict: bool) -> None:
    base = SAMPLE.read_bytes()
    for index in range(0, len(base), 7):
        for replacement in (b"", b" ", b"\\", b"\n", b"-", b"@", b"\xff", b"9"):
            mangled = base[:index] + replacement + base[index + 1 :]
            try:
                parse_dumpfile(mangled, strict=strict)
            except ValidationError:
                pass


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_validation_errors(data: bytes) -> None:
    for strict in (True, False):
        try:
            parse_dumpfile(ROOT + data, strict=strict)
        except ValidationError:
            pass


# -- lenient mode --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "check"),
    [
        (ROOT + line()[:-1], lambda tree: b"/f" in tree),
        (
            ROOT + line(mode=b"100644", rdev=b"10"),
            lambda tree: tree.inode(b"/f").rdev == 0,
        ),
        (
            b"/ 0 40755 2 0 0 10 0.0 - - -\n",
            lambda tree: tree.root.rdev == 0,
        ),
        (
            ROOT + line(mode=b"120777", size=b"5", payload=b"abc"),
            lambda tree: tree.inode(b"/f").symlink_target == b"abc",
        ),
        (
            ROOT + line(mode=b"20720777", size=b"1", payload=b"a"),
            lambda tree: tree.inode(b"/f").mode == 0o120777,
        ),
        (
            ROOT + b"/f 0 120777 1 0 0 0 0.0 target\n",
            lambda tree: tree.inode(b"/f").symlink_target == b"target",
        ),
        (
            ROOT + b"/f 0 100644 1 0 0 0 0.0 - -\n",
            lambda tree: tree.inode(b"/f").content is None,
        ),
    ],
)
def test_lenient_mode_allows_exactly_what_upstreams_nonstrict_assets_need(
    text: bytes, check: Callable[[Tree], bool]
) -> None:
    rejected(text, strict=True)
    assert check(parse_dumpfile(text, strict=False))


@pytest.mark.parametrize(
    "text",
    [
        ROOT + b"/f 0 100644 1 0 0 0 0.0\n",  # a line must reach PAYLOAD
        ROOT + line(mode=b"77777777777"),  # beyond 32 bits
        ROOT + line(size=b"4", content=b"abc"),
        ROOT + line(xattrs=(b"user.a=1", b"user.a=2")),
        ROOT + line(uid=b"-1"),
        ROOT + line(digest=b"abcd"),
        ROOT + line(mode=b"40755", payload=b"ab/cd"),
        ROOT + line(mtime=b"0"),
        ROOT + line(path=b"/f") + line(path=b"/f"),
        ROOT + line(mode=b"20644", rdev=b"4294967296"),
        ROOT + line().rstrip(b"\n") + b" \n",
    ],
)
def test_lenient_mode_still_rejects_everything_else(text: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_dumpfile(text, strict=False)


# -- inputs --------------------------------------------------------------------


def test_input_may_be_bytes_str_or_a_path(tmp_path: Path) -> None:
    text = SAMPLE.read_bytes()
    by_bytes = parse_dumpfile(text)
    assert parse_dumpfile(text.decode("ascii")) == by_bytes
    assert parse_dumpfile(SAMPLE) == by_bytes
    gz = tmp_path / "sample.dump.gz"
    gz.write_bytes(gzip.compress(text))
    with pytest.raises(ValidationError):
        parse_dumpfile(gz)  # no sniffing: callers decompress
    assert parse_dumpfile(bytearray(text)) == by_bytes  # type: ignore[arg-type]
    assert parse_dumpfile(memoryview(text)) == by_bytes  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_dumpfile(42)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        parse_dumpfile(text.decode("ascii") + "/\ud800 0 100644 1 0 0 0 0.0 - - -\n")


def test_limits_bound_input_size_and_line_count() -> None:
    text = SAMPLE.read_bytes()
    with pytest.raises(ValidationError, match="larger than"):
        parse_dumpfile(text, limits=Limits(max_input_bytes=len(text) - 1))
    with pytest.raises(ValidationError):
        parse_dumpfile(text, limits=Limits(max_entries=10))
    parse_dumpfile(text, limits=Limits(max_input_bytes=len(text)))


def test_error_message_names_line_path_and_field() -> None:
    err = rejected(ROOT + line(path=b"/usr\\x20bin", uid=b"-1"))
    assert (err.entry, err.path, err.field) == (2, "/usr bin", "uid")
    assert str(err).startswith('entry 2 ("/usr bin"): uid: must be a decimal integer')


# -- dump ---------------------------------------------------------------------


def test_sample_is_canonical() -> None:
    text = SAMPLE.read_text("ascii")
    tree = parse_dumpfile(text)
    assert dump(tree) == text
    assert dump_bytes(tree) == text.encode("ascii")
    assert len(tree) >= 30


def test_dump_is_canonical_and_stable() -> None:
    messy = (
        b"/ 1 040755 99 0 0 0 0.000000001 - - - user.z=1 user.a=\\x41\n"
        + line(path=b"/z", size=b"3", nlink=b"2", content=b"\\x61bc")
        + line(path=b"/a", mode=b"@100644", payload=b"/z")
        + line(path=b"/l", mode=b"120777", size=b"2", payload=b"\\x2d\\x2d")
        + line(path=b"/m", mode=b"120777", size=b"1", payload=b"\\x2d")
    )
    first = dump(parse_dumpfile(messy))
    assert dump(parse_dumpfile(first)) == first
    assert first.splitlines()[0] == "/ 4096 40755 2 0 0 0 0.1 - - - user.a=A user.z=1"
    # a hardlink line repeats its inode's attributes, content included
    assert "/a 3 @100644 2 0 0 0 0.0 /z abc -" in first.splitlines()
    assert "/z 3 100644 2 0 0 0 0.0 - abc -" in first.splitlines()
    assert "/l 2 120777 1 0 0 0 0.0 -- - -" in first.splitlines()
    assert "/m 1 120777 1 0 0 0 0.0 \\x2d - -" in first.splitlines()


@given(
    names=st.lists(
        st.binary(min_size=1, max_size=20).filter(
            lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
        ),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    value=st.binary(max_size=64),
    content=st.binary(min_size=1, max_size=64),
    mtime=st.integers(-(2**63), 2**63 - 1),
    nsec=st.integers(0, 999_999_999),
)
def test_escaping_round_trips_any_bytes(
    names: list[bytes], value: bytes, content: bytes, mtime: int, nsec: int
) -> None:
    builder = TreeBuilder()
    builder.add(b"/", Inode(mode=0o40755, mtime=mtime, mtime_nsec=nsec))
    for index, name in enumerate(names):
        xattr_name = b"user." + name
        builder.add(
            b"/" + name,
            Inode(
                mode=0o100600,
                size=len(content),
                content=content,
                xattrs=((xattr_name, value),),
                uid=index,
            ),
        )
    target = value.replace(b"\0", b"") or b"-"
    builder.add(b"/link", Inode(mode=0o120777, symlink_target=target))
    tree = builder.build()
    text = dump(tree)
    assert text.isascii()
    assert parse_dumpfile(text) == tree
    assert dump(parse_dumpfile(text)) == text


def test_any_valid_tree_round_trips_through_its_dump() -> None:
    strategies = pytest.importorskip("composefs_py.strategies")

    @settings(max_examples=200)
    @given(strategies.trees(limits=OPEN))
    def round_trip(tree: Tree) -> None:
        # the image keeps 32 bits of a device number; the parser takes no more
        assume(all(node.rdev <= 0xFFFFFFFF for _, node in tree if isinstance(node, Inode)))
        text = dump(tree)
        back = parse_dumpfile(text, limits=OPEN)
        assert dump(back) == text
        assert back == tree

    round_trip()


# -- upstream assets ---------------------------------------------------------------


def assets(src: Path) -> Path:
    return src / "tests" / "assets"


def read_asset(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def checksum_assets(src: Path) -> list[Path]:
    """Every asset with a .sha256 that the source package ships."""
    found = []
    for checksum in sorted(assets(src).glob("*.sha256")):
        asset = checksum.with_name(checksum.name.removesuffix(".sha256"))
        if asset.exists():
            found.append(asset)
    return found


def test_every_should_fail_asset_raises_validation_error(composefs_src: Path) -> None:
    failing = sorted(assets(composefs_src).glob("should-fail-*.dump"))
    assert len(failing) >= 14
    for asset in failing:
        data = asset.read_bytes()
        for strict in (True, False):
            with pytest.raises(ValidationError):
                parse_dumpfile(data, strict=strict)


def test_every_checksum_asset_parses_strict_unless_upstream_marks_it_nonstrict(
    composefs_src: Path,
) -> None:
    found = checksum_assets(composefs_src)
    assert {path.name for path in found} >= NONSTRICT | {"special.dump", "bigfile.dump"}
    assert any(path.name.endswith(".gz") for path in found)
    for asset in found:
        data = read_asset(asset)
        limits = OPT_INS.get(asset.name)
        if asset.name in NONSTRICT:
            with pytest.raises(ValidationError):
                parse_dumpfile(data, limits=limits)
            tree = parse_dumpfile(data, strict=False, limits=limits)
        else:
            tree = parse_dumpfile(data, limits=limits)
        assert len(tree) == data.count(b"\n") + (not data.endswith(b"\n"))
        assert dump(parse_dumpfile(dump(tree), limits=limits)) == dump(tree)


def _normalize_info_line(text: str) -> str:
    """composefs-info's line with the differences EROFS forces taken out.

    - xattrs: composefs-info lists an inode's inline xattrs before its shared
      ones; sort them.
    - a directory holding a whiteout (char 0:0) gets ``trusted.overlay.opaque=x``
      and ``user.overlay.opaque=x`` in format version 1: drop them.
    """
    fields = text.split(" ")
    xattrs = sorted(
        x for x in fields[11:] if x not in ("trusted.overlay.opaque=x", "user.overlay.opaque=x")
    )
    return " ".join(fields[:11] + xattrs)


def _version_args(asset: Path) -> list[str]:
    version_file = asset.with_name(asset.name + ".version")
    if not version_file.exists():
        return []
    version = version_file.read_text().strip()
    return [f"--min-version={version}", f"--max-version={version}"]


def test_dump_equals_composefs_info_dump_of_the_mkcomposefs_image(
    composefs_src: Path,
    run_mkcomposefs: Callable[..., bytes],
    composefs_info: Path,
) -> None:
    """Our dump of each asset is composefs-info's dump of mkcomposefs's image,
    and mkcomposefs makes the very same image from our dump."""
    exact = 0
    for asset in checksum_assets(composefs_src):
        data = read_asset(asset)
        tree = parse_dumpfile(
            data, strict=asset.name not in NONSTRICT, limits=OPT_INS.get(asset.name)
        )
        ours = dump(tree)
        version = _version_args(asset)
        image = run_mkcomposefs(data, *version)
        theirs = composefs_info_dump(composefs_info, image)
        if ours == theirs:
            exact += 1
        else:
            assert [_normalize_info_line(x) for x in ours.splitlines()] == [
                _normalize_info_line(x) for x in theirs.splitlines()
            ], asset.name
        assert run_mkcomposefs(dump_bytes(tree), *version) == image, asset.name
    assert exact >= 10  # the real-world images among them match byte for byte


def test_sample_dump_equals_composefs_info_dump_byte_for_byte(
    run_mkcomposefs: Callable[..., bytes], composefs_info: Path, mkcomposefs: Path
) -> None:
    text = SAMPLE.read_bytes()
    image = run_mkcomposefs(text)
    assert composefs_info_dump(composefs_info, image) == text.decode("ascii")
    env_strict = {**os.environ, "CFS_PARSE_STRICT": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "img"
        subprocess.run(
            [str(mkcomposefs), "--from-file", "-", str(out)],
            input=text,
            check=True,
            env=env_strict,
        )
        assert out.read_bytes() == image


def _escape_torture() -> bytes:
    every_byte = bytes(b for b in range(1, 256) if b != ord("/"))
    all_bytes = "".join(f"\\x{b:02x}" for b in range(256)).encode()
    lines = [
        b"/ 0 40755 2 0 0 0 0.0 - - - user.all=" + all_bytes,
        line(
            path=b"/" + "".join(f"\\x{b:02x}" for b in every_byte).encode(),
            size=b"256",
            content=all_bytes,
            xattrs=(b"user.\\x3d\\x20\\x5c=\\x3d",),
        ).rstrip(b"\n"),
        line(path=b"/l", mode=b"120777", size=b"4", payload=b"\\x20\\x3d\\x5c\\xff").rstrip(b"\n"),
        line(path=b"/m", size=b"1", content=b"\\x2d").rstrip(b"\n"),
        line(path=b"/p", size=b"4096", payload=b"\\x2d").rstrip(b"\n"),
    ]
    return b"\n".join(lines) + b"\n"


def test_escaping_matches_composefs_info_for_every_byte(
    run_mkcomposefs: Callable[..., bytes], composefs_info: Path
) -> None:
    tree = parse_dumpfile(_escape_torture(), limits=OPEN)  # its payload "-" is no object name
    image = run_mkcomposefs(dump_bytes(tree))
    assert dump(tree) == composefs_info_dump(composefs_info, image)


def _dir_torture() -> bytes:
    out = [b"/ 0 40755 2 0 0 0 0.0 - - -"]
    # names sorting before and after "." and "..", root children named like the
    # whiteouts libcomposefs adds to the root, a directory spanning blocks, a tail
    # just over half a block, an empty directory.
    for name in (b"+a", b"-b", b"0a", b"ff", b"~z", b"empty"):
        out.append(line(path=b"/" + name, mode=b"40755").rstrip(b"\n"))
    out.append(line(path=b"/big", mode=b"40755").rstrip(b"\n"))
    for index in range(300):
        out.append(line(path=b"/big/%s%04d" % (b"n" * (index % 40), index)).rstrip(b"\n"))
    out.append(line(path=b"/half", mode=b"40755").rstrip(b"\n"))
    for index in range(97):
        out.append(line(path=b"/half/file%05d" % index).rstrip(b"\n"))
    return b"\n".join(out) + b"\n"


def test_directory_sizes_match_what_libcomposefs_writes(
    run_mkcomposefs: Callable[..., bytes], composefs_info: Path
) -> None:
    tree = parse_dumpfile(_dir_torture())
    ours = dump(tree)
    assert ours == composefs_info_dump(composefs_info, run_mkcomposefs(dump_bytes(tree)))
    sizes = {x.split(" ")[0]: int(x.split(" ")[1]) for x in ours.splitlines()}
    assert sizes["/empty"] == 27  # 12 + 1 + 12 + 2: "." and ".."
    assert sizes["/big"] > 4096


# ---------------------------------------------------------------------------
# cost: hardlink chains resolve in linear time
# ---------------------------------------------------------------------------


def _link_dump(shape: str, n: int) -> bytes:
    """A dumpfile of one file ``/f`` and ``n`` hardlinks shaped as test_model's ``_link_shape``."""
    from test_model import _link_shape

    lines = [ROOT]
    for path, node in _link_shape(shape, n):
        if isinstance(node, Hardlink):
            lines.append(b"%s 0 @100644 1 0 0 0 0.0 %s - -\n" % (path, node.target))
        else:
            lines.append(b"%s 0 100644 %d 0 0 0 0.0 - - -\n" % (path, n + 1))
    return b"".join(lines)


@pytest.mark.parametrize("shape", ["chain", "reverse", "fan-in", "comb"])
def test_hardlink_chains_cost_linear_time(shape: str) -> None:
    from tests.cost import growth

    small, large, ratio = growth(parse_dumpfile, lambda n: _link_dump(shape, n), 10000)
    assert ratio < 8, f"{shape}: 10000 links {small:.3f} s, 40000 links {large:.3f} s"
    tree = parse_dumpfile(_link_dump(shape, 30))
    assert all(node == Hardlink(b"/f") for _, node in tree if isinstance(node, Hardlink))


# ---------------------------------------------------------------------------
# payloads are object names; overlay xattrs of an input are refused
# ---------------------------------------------------------------------------


def _payload_line(payload: bytes) -> bytes:
    escaped = b"".join(b"\\x%02x" % byte if byte <= 0x20 or byte >= 0x7F or byte == 0x5C
                       else bytes((byte,)) for byte in payload)  # fmt: skip
    return ROOT + line(path=b"/f", size=b"1", payload=escaped or b"-")


@pytest.mark.parametrize("length", range(71))
def test_a_payload_of_each_length_but_65_is_refused(length: int) -> None:
    from test_model import _payload_shaped

    text = _payload_line(_payload_shaped(length))
    if length in (0, 65):
        parse_dumpfile(text)  # 0: no payload ("-")
    else:
        error = assert_rejects(text, "payload")
        assert error.path == "/f"


def _shapes() -> list[bytes]:
    from test_model import BAD_PAYLOAD_SHAPES

    return BAD_PAYLOAD_SHAPES


@pytest.mark.parametrize("payload", _shapes(), ids=repr)
def test_a_payload_of_another_shape_is_refused(payload: bytes) -> None:
    error = assert_rejects(_payload_line(payload), "payload")
    assert error.path == "/f"


@pytest.mark.parametrize("payload", _shapes(), ids=repr)
def test_read_image_refuses_an_image_holding_such_a_payload(
    payload: bytes, run_mkcomposefs: Callable[..., bytes]
) -> None:
    from composefs_py.writer import read_image

    if b"\0" in payload:
        pytest.skip("mkcomposefs cuts a payload at a NUL")
    image = run_mkcomposefs(_payload_line(payload))
    with pytest.raises(ValidationError) as caught:
        read_image(image)
    assert caught.value.field == "payload"
    assert caught.value.path == "/f"


@pytest.mark.parametrize(
    ("xattr", "mode"),
    [
        (b"trusted.overlay.redirect=/secret", b"40755"),
        (b"trusted.overlay.metacopy=", b"100644"),
        (b"trusted.overlay.origin=\\x00\\xfb", b"40755"),
        (b"trusted.overlay.opaque=y", b"100644"),
        (b"trusted.overlay.opaque=x", b"20600"),
        (b"trusted.overlay.opaque=n", b"40755"),
        (b"trusted.overlay.whiteout=", b"100644"),
        (b"trusted.overlay.overlay.redirect=/x", b"40755"),
    ],
)
def test_overlay_xattrs_of_a_dumpfile_are_refused(xattr: bytes, mode: bytes) -> None:
    text = ROOT + line(path=b"/e", mode=mode, xattrs=(b"user.a=1", xattr))
    error = assert_rejects(text, "xattrs")
    assert error.path == "/e"
    assert error.reason.startswith(xattr.split(b"=")[0].decode() + " is overlayfs metadata")
    parse_dumpfile(text, limits=Limits(allow_overlay_xattrs=True))


@pytest.mark.parametrize("value", [b"y", b"x"])
def test_the_opaque_marks_of_a_directory_are_taken(value: bytes) -> None:
    tree = parse_dumpfile(
        ROOT + line(path=b"/d", mode=b"40755", xattrs=(b"trusted.overlay.opaque=" + value,))
    )
    assert tree.inode(b"/d").xattrs == ((b"trusted.overlay.opaque", value),)


def test_the_line_limit_is_checked_before_the_lines_are_made() -> None:
    import tracemalloc

    text = b"\n" * 4_000_000 + b"x"
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError, match="more than 1000 lines"):
            parse_dumpfile(text, limits=Limits(max_entries=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # before: the split made a 32 MB list of 4M lines first
    assert peak < 1 << 20, peak
    with pytest.raises(ValidationError, match="more than 2 lines"):
        parse_dumpfile(ROOT + line(path=b"/a") + b"/b", limits=Limits(max_entries=2), strict=False)
