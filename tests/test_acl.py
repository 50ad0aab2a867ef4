"""POSIX ACL xattr values: composefs_py._acl against the kernel.

The kernel is the oracle: ``setxattr`` of ``system.posix_acl_access`` on a
tmpfs runs the same checks (posix_acl_from_xattr, posix_acl_valid) that
``posix_acl_problem`` mirrors, and a mounted composefs image shows a value
the check rejects as unreadable.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs_py import (
    Inode,
    TreeBuilder,
    ValidationError,
    mount,
    parse_dumpfile,
    parse_toc,
    unmount,
    write_image,
)
from composefs_py._acl import ACL_XATTR_NAMES, posix_acl_problem
from composefs_py.model import ROOT

ACCESS = "system.posix_acl_access"
NO_ID = 0xFFFFFFFF


def acl(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *e) for e in entries)


USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
MINIMAL = acl((USER_OBJ, 6, NO_ID), (GROUP_OBJ, 4, NO_ID), (OTHER, 4, NO_ID))
FULL = acl(
    (USER_OBJ, 7, NO_ID),
    (USER, 5, 1000),
    (USER, 4, 0),
    (GROUP_OBJ, 5, NO_ID),
    (GROUP, 6, 50),
    (MASK, 7, NO_ID),
    (OTHER, 0, NO_ID),
)


@pytest.mark.parametrize(
    "value",
    [acl(), MINIMAL, FULL, acl((USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (MASK, 4, 0), (OTHER, 4, 0))],
)
def test_well_formed_acls_pass(value: bytes) -> None:
    assert posix_acl_problem(value) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "4-byte header"),
        (b"x", "4-byte header"),
        (acl((USER_OBJ, 6, 0), version=1), "version must be 2"),
        (MINIMAL[:-1], "8 bytes each"),
        (acl((3, 6, 0)), "unknown tag 0x3"),
        (acl((GROUP_OBJ, 4, 0), (USER_OBJ, 6, 0), (OTHER, 4, 0)), "GROUP_OBJ is out of place"),
        (acl((USER_OBJ, 8, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)), "within rwx"),
        (
            acl((USER_OBJ, 6, 0), (USER, 4, NO_ID), (GROUP_OBJ, 4, 0), (MASK, 4, 0), (OTHER, 4, 0)),
            "needs an id",
        ),
        (
            acl((USER_OBJ, 6, 0), (USER, 4, 7), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)),
            "OTHER is out of place",
        ),
        (acl((USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0)), "incomplete"),
        (MINIMAL + struct.pack("<HHI", OTHER, 4, 0), "OTHER is out of place"),
    ],
)
def test_malformed_acls_say_what_is_wrong(value: bytes, words: str) -> None:
    problem = posix_acl_problem(value)
    assert problem is not None and words in problem, problem


# ---------------------------------------------------------------------------
# the kernel as oracle (root only)
# ---------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")


@pytest.fixture(scope="module")
def acl_tmpfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs with POSIX ACLs: its setxattr checks ACL values as the kernel does."""
    _require_root()
    where = tmp_path_factory.mktemp("acl-tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        probe = where / "probe"
        probe.touch()
        try:
            os.setxattr(probe, ACCESS, MINIMAL)
        except OSError as exc:
            pytest.skip(f"this kernel's tmpfs has no POSIX ACLs: {exc}")
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@st.composite
def _acl_values(draw: st.DrawFn) -> bytes:
    """A well-formed ACL, then (mostly) one mutation of it."""
    ids = st.sampled_from([0, 1, 1000, 65534])
    perm = st.integers(0, 7)
    users = draw(st.lists(st.tuples(st.just(USER), perm, ids), max_size=2))
    groups = draw(st.lists(st.tuples(st.just(GROUP), perm, ids), max_size=2))
    entries: list[tuple[int, int, int]] = [
        (USER_OBJ, draw(perm), NO_ID),
        *users,
        (GROUP_OBJ, draw(perm), NO_ID),
        *groups,
    ]
    mask: bool = draw(st.booleans())
    if users or groups or mask:
        entries.append((MASK, draw(perm), NO_ID))
    entries.append((OTHER, draw(perm), NO_ID))
    version = 2
    at = draw(st.integers(0, len(entries) - 1))
    tag, bits, ident = entries[at]
    mutation = draw(
        st.sampled_from(["none", "perm", "id", "drop", "swap", "tag", "version", "cut", "append"])
    )
    if mutation == "perm":
        entries[at] = (tag, draw(st.sampled_from([8, 0xF, 0x10, 0xFFFF])), ident)
    elif mutation == "id":
        entries[at] = (tag, bits, NO_ID)
    elif mutation == "drop":
        del entries[at]
    elif mutation == "swap":
        other = draw(st.integers(0, len(entries) - 1))
        entries[at], entries[other] = entries[other], entries[at]
    elif mutation == "tag":
        new_tag = draw(st.sampled_from([USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER, 0, 3]))
        entries[at] = (new_tag, bits, ident)
    elif mutation == "version":
        version = draw(st.sampled_from([0, 1, 3, NO_ID]))
    elif mutation == "append":
        entries.append((draw(st.sampled_from([USER_OBJ, USER, GROUP, MASK, OTHER])), 4, draw(ids)))
    value = acl(*entries, version=version)
    if mutation == "cut":
        value = value[: draw(st.integers(1, len(value) - 1))]
    return value


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_acl_values())
def test_the_check_agrees_with_the_kernels_setxattr(acl_tmpfs: Path, value: bytes) -> None:
    target = acl_tmpfs / "f"
    target.touch()
    try:
        os.setxattr(target, ACCESS, value)
        kernel_ok = True
    except OSError as exc:
        assert exc.errno in (errno.EINVAL, errno.EOPNOTSUPP), exc
        kernel_ok = False
    finally:
        target.unlink()
    problem = posix_acl_problem(value)
    assert (problem is None) == kernel_ok, (value.hex(), problem)


@pytest.mark.parametrize(
    ("value", "readable"),
    [
        (MINIMAL, True),
        (FULL, True),
        (b"", False),
        (b"x", False),
        (MINIMAL[:-1], False),
        (acl((3, 6, 0)), False),
        (acl((USER_OBJ, 6, 0), version=1), False),
    ],
)
def test_a_mounted_image_shows_exactly_the_values_the_check_passes(
    value: bytes, readable: bool, tmp_path: Path
) -> None:
    _require_root()
    assert (posix_acl_problem(value) is None) == readable
    builder = TreeBuilder()
    builder.add(ROOT, Inode(mode=stat.S_IFDIR | 0o755))
    xattrs = tuple((name, value) for name in sorted(ACL_XATTR_NAMES))
    builder.add(b"/d", Inode(mode=stat.S_IFDIR | 0o755, xattrs=xattrs))
    image, mnt, objects = tmp_path / "img", tmp_path / "mnt", tmp_path / "objects"
    mnt.mkdir()
    objects.mkdir()
    write_image(builder.build(), image)
    mount(image, mnt, objects=objects)
    try:
        for name in sorted(ACL_XATTR_NAMES):
            try:
                shown: bytes | None = os.getxattr(mnt / "d", name.decode())
            except OSError as exc:
                assert exc.errno in (errno.EINVAL, errno.EOPNOTSUPP), exc
                shown = None
            if readable and value == acl():
                assert shown is None  # the header alone: no ACL
            elif readable:
                assert shown == value
            else:
                assert shown is None
    finally:
        unmount(mnt)


# ---------------------------------------------------------------------------
# the TOC validator applies the check
# ---------------------------------------------------------------------------


def _toc(value: bytes) -> bytes:
    entry = {
        "type": "dir",
        "name": "d",
        "mode": 0o755,
        "xattrs": {ACCESS: base64.b64encode(value).decode()},
    }
    return json.dumps({"version": 1, "entries": [entry]}).encode()


@pytest.mark.parametrize("value", [b"", b"x", MINIMAL[:-1], acl((3, 6, 0))])
def test_parse_toc_rejects_a_malformed_acl_naming_entry_and_field(value: bytes) -> None:
    with pytest.raises(ValidationError) as info:
        parse_toc(_toc(value))
    error = info.value
    assert (error.entry, error.field) == (0, "xattrs")
    problem = posix_acl_problem(value)
    assert problem is not None
    assert ACCESS in str(error) and problem in str(error)


def test_parse_toc_keeps_a_well_formed_acl() -> None:
    tree = parse_toc(_toc(FULL))
    assert dict(tree.inode(b"/d").xattrs)[ACCESS.encode()] == FULL


def test_parse_dumpfile_keeps_any_acl_value_as_mkcomposefs_does() -> None:
    # upstream's honggfuzz-bigfile-with-acl asset carries "x" on purpose
    tree = parse_dumpfile(b"/ 0 40755 1 0 0 0 0.0 - - - system.posix_acl_default=x\n")
    assert dict(tree.root.xattrs)[b"system.posix_acl_default"] == b"x"
