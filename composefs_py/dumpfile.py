"""composefs-dump(5) text <-> :class:`~composefs_py.model.Tree`.

The format (``man composefs-dump``): one line per file, eleven fields
separated by single spaces, then the extended attributes::

    PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [NAME=VALUE ...]

Bytes that are not printable, and the separators, are escaped as ``\\xHH``
(``\\\\``, ``\\n``, ``\\r`` and ``\\t`` too); ``-`` marks an absent optional
field (``PAYLOAD``, ``CONTENT``, ``DIGEST``), a literal ``-`` is written
``\\x2d``.  A hardlink has ``@`` before its mode and its target's path as
payload.

:func:`parse_dumpfile` is the validator: stricter than ``mkcomposefs``
(even with its ``CFS_PARSE_STRICT``), it range-checks every number and
rejects anything ``mkcomposefs`` would silently truncate, ignore or read
uninitialized.  ``strict=False`` admits exactly the sloppiness of the three
dumpfiles upstream's own test suite parses leniently (see
:data:`LENIENT_ALLOWS`), nothing more.

:func:`dump` writes the text ``composefs-info dump`` prints for the image
libcomposefs makes from the tree, byte for byte (directory sizes included),
but for what the image cannot tell: ``composefs-info`` lists an inode's
inline xattrs before its shared ones (``dump`` sorts them by name), shows the
``trusted.overlay.opaque=x``/``user.overlay.opaque=x`` marks format version 1
puts on a directory holding a whiteout, and puts a hardlink group's inode at
its first path (``dump`` keeps it where the tree has it: the choice changes
the image bytes).  ``dump(parse_dumpfile(x))`` is canonical and stable, and
``mkcomposefs --from-file`` writes the same image from it as from ``x``.

Cost: :func:`parse_dumpfile` is linear in its input.  ``max_input_bytes``
is checked before a file is read whole (it reads one byte more, at most),
``max_entries`` on the count of newlines before the text is split into
lines; every field is bounded before it is converted (numbers by their
digits, escapes by the line); the memos of modes, times and xattr fields
are bounded in size; every tree rule and limit is the
:class:`~composefs_py.model.TreeBuilder`'s, line by line.

Both sides describe the tree, not the image: a whiteout is a character
device 0:0 and an xattr named ``trusted.overlay.*`` is just that xattr.
libcomposefs's writer turns whiteouts into escaped overlay whiteouts and
escapes ``trusted.overlay.*`` names; its reader undoes both.
"""

from __future__ import annotations

import binascii
import os
import re
import stat
from collections.abc import Callable
from typing import Final

from .errors import ValidationError, read_source
from .limits import Limits
from .model import (
    ROOT,
    S_IFBLK,
    S_IFCHR,
    S_IFDIR,
    S_IFLNK,
    S_IFMT,
    S_IFREG,
    Hardlink,
    Inode,
    Node,
    Tree,
    TreeBuilder,
    name_of,
    parent_of,
)

__all__ = ["FIELDS", "LENIENT_ALLOWS", "dump", "dump_bytes", "parse_dumpfile"]

#: The fixed fields of a line, in order, as :attr:`ValidationError.field` names them.
FIELDS: Final = (
    "path",
    "size",
    "mode",
    "nlink",
    "uid",
    "gid",
    "rdev",
    "mtime",
    "payload",
    "content",
    "digest",
)

#: What ``strict=False`` accepts on top of strict mode: the sloppiness of
#: upstream's non-strict assets (``tests/test-checksums.sh``), handled as
#: ``mkcomposefs`` handles it.
LENIENT_ALLOWS: Final = (
    "a last line without a final newline (no-newline.dump)",
    "a device number on a non-device, ignored (no-newline.dump)",
    "a symlink size other than the target's length, ignored "
    "(longlink.dump, honggfuzz-longlink-unterminated.dump)",
    "mode bits above the 16-bit st_mode, dropped as the image drops them "
    "(honggfuzz-longlink-unterminated.dump)",
    "a line ending after PAYLOAD: CONTENT and DIGEST absent (honggfuzz-longlink-unterminated.dump)",
)

_U32_MAX: Final = (1 << 32) - 1
_U64_MAX: Final = (1 << 64) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
#: EROFS keeps 32 bits of a device number (``i_u.rdev``); a larger one would
#: silently become another device, or 0:0, a whiteout.
_RDEV_MAX: Final = _U32_MAX
#: libcomposefs stores a non-inline file as at most LCFS_MAX_NONINLINE_CHUNKS
#: (1024) chunks of at most 2^43 bytes and fails with EFBIG beyond that.
_MAX_NONINLINE_SIZE: Final = 1024 << 43
_NSEC_PER_SEC: Final = 1_000_000_000
#: More digits than any accepted number has (u64 max has 20); longer fields are
#: rejected before int() sees them.
_MAX_DIGITS: Final = 24
_MODE_BITS: Final = S_IFMT | 0o7777
#: Entries in each per-parse memo of parsed modes and mtimes.
_MEMO_SIZE: Final = 4096
#: Bounds of the per-parse cache of xattr fields (field length, entries).
_XATTR_CACHE_FIELD: Final = 1024
_XATTR_CACHE_SIZE: Final = 16384
#: Decimal strings of small numbers (no sign, no leading zero), parsed once.
_SMALL_INTS: Final = {str(i).encode(): i for i in range(4096)}
_EROFS_BLKSIZ: Final = 4096
_EROFS_DIRENT_SIZE: Final = 12
#: The 256 overlay whiteouts ``00``..``ff`` libcomposefs adds to the image root.
_ROOT_WHITEOUTS: Final = frozenset(b"%02x" % i for i in range(256))

# -- escapes -----------------------------------------------------------------

_UNESCAPES: dict[bytes, bytes] = {
    b"\\\\": b"\\",
    b"\\n": b"\n",
    b"\\r": b"\r",
    b"\\t": b"\t",
}
for _byte in range(256):
    _hi, _lo = divmod(_byte, 16)
    for _h in {f"{_hi:x}", f"{_hi:X}"}:
        for _l in {f"{_lo:x}", f"{_lo:X}"}:
            _UNESCAPES[f"\\x{_h}{_l}".encode()] = bytes((_byte,))
del _byte, _hi, _lo, _h, _l

# One escape, or a backslash that starts none (the lookup then fails).
_ESCAPE_RE: Final = re.compile(rb"\\(?:x[0-9a-fA-F]{2}|[\\nrt])|\\.?", re.DOTALL)


class _BadEscape(Exception):
    def __init__(self, escape: bytes) -> None:
        self.escape = escape


def _unescape_match(match: re.Match[bytes]) -> bytes:
    try:
        return _UNESCAPES[match.group()]
    except KeyError:
        raise _BadEscape(match.group()) from None


def _unescape(field: bytes) -> bytes:
    if field.find(b"\\") < 0:
        return field
    return _ESCAPE_RE.sub(_unescape_match, field)


def _escape_table(*, escape_equal: bool) -> list[str]:
    table = []
    for byte in range(256):
        char = chr(byte)
        if char == "\\":
            table.append("\\\\")
        elif char == "\n":
            table.append("\\n")
        elif char == "\r":
            table.append("\\r")
        elif char == "\t":
            table.append("\\t")
        elif 0x21 <= byte <= 0x7E and not (escape_equal and char == "="):
            table.append(char)  # isgraph() in the C locale
        else:
            table.append(f"\\x{byte:02x}")
    return table


_ESC_STANDARD: Final = _escape_table(escape_equal=False)
_ESC_EQUAL: Final = _escape_table(escape_equal=True)
_NEEDS_ESC_STANDARD: Final = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")
_NEEDS_ESC_EQUAL: Final = re.compile(rb"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]")


def _escape(value: bytes) -> str:
    """``print_escaped(value, ESCAPE_STANDARD)`` of composefs-info."""
    if _NEEDS_ESC_STANDARD.search(value) is None:
        return value.decode("ascii")
    table = _ESC_STANDARD
    return "".join([table[byte] for byte in value])


def _escape_equal(value: bytes) -> str:
    """``print_escaped(value, ESCAPE_EQUAL)``: ``=`` escaped too (xattrs)."""
    if _NEEDS_ESC_EQUAL.search(value) is None:
        return value.decode("ascii")
    table = _ESC_EQUAL
    return "".join([table[byte] for byte in value])


def _escape_optional(value: bytes | None) -> str:
    """``print_escaped_optional(value, ESCAPE_LONE_DASH)``."""
    if value is None:
        return "-"
    if value == b"-":
        return "\\x2d"
    return _escape(value)


# -- parsing -----------------------------------------------------------------

_FIELD_RENAMES: Final = {"name": "path", "linkName": "payload", "type": "mode"}


class _LineError(Exception):
    """A problem in the current line; parse_dumpfile adds line number and path."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason


def _uint(field: bytes, name: str, high: int) -> int:
    if not field.isdigit() or len(field) > _MAX_DIGITS:
        raise _LineError(name, f"must be a decimal integer in 0..{high}, got {_show(field)}")
    value = int(field)
    if value > high:
        raise _LineError(name, f"must be a decimal integer in 0..{high}, got {_show(field)}")
    return value


def _mtime(field: bytes) -> tuple[int, int]:
    sec, dot, nsec = field.partition(b".")
    digits = sec[1:] if sec[:1] == b"-" else sec
    if (
        not dot
        or not digits.isdigit()
        or not nsec.isdigit()
        or len(digits) > _MAX_DIGITS
        or len(nsec) > _MAX_DIGITS
    ):
        raise _LineError("mtime", f"must be SECONDS.NANOSECONDS in decimal, got {_show(field)}")
    seconds = int(sec)
    nanoseconds = int(nsec)
    if not _I64_MIN <= seconds <= _I64_MAX:
        raise _LineError("mtime", f"seconds must be in {_I64_MIN}..{_I64_MAX}")
    if nanoseconds >= _NSEC_PER_SEC:
        raise _LineError("mtime", f"nanoseconds must be in 0..999999999, got {nanoseconds}")
    return seconds, nanoseconds


def _mode(field: bytes, strict: bool) -> int:
    if not field.isdigit() or len(field) > _MAX_DIGITS:
        raise _LineError("mode", f"must be an octal integer, got {_show(field)}")
    try:
        mode = int(field, 8)
    except ValueError:
        raise _LineError("mode", f"must be an octal integer, got {_show(field)}") from None
    if mode & ~_MODE_BITS:
        if strict or mode > _U32_MAX:
            raise _LineError("mode", f"has bits outside file type and 0o7777: 0o{mode:o}")
        mode &= 0o177777  # what the image's 16-bit i_mode keeps
    if mode & S_IFMT not in _FILE_TYPES:
        raise _LineError("mode", f"has no valid file type: 0o{mode:o}")
    return mode


_FILE_TYPES: Final = frozenset(
    (S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)
)


def _digest(field: bytes) -> bytes:
    text = _unescape(field)
    if len(text) == 64:
        try:
            return binascii.unhexlify(text)  # no whitespace, no sign: only hex digits
        except binascii.Error:
            pass
    raise _LineError("digest", f"must be 64 hexadecimal digits or -, got {_show(field)}")


def _xattrs(field: bytes) -> tuple[tuple[bytes, bytes], ...]:
    pairs = []
    for token in field.split(b" "):
        name, equal, value = token.partition(b"=")
        if not equal:
            raise _LineError("xattrs", f"expected NAME=VALUE, got {_show(token)}")
        pairs.append((_unescape(name), _unescape(value)))
    if len(pairs) > 1:
        pairs.sort()
        previous = None
        for name, _ in pairs:
            if name == previous:
                raise _LineError("xattrs", f"name {_show(name)} appears twice")
            previous = name
    return tuple(pairs)


def _show(value: bytes, limit: int = 40) -> str:
    text = repr(value[:limit])
    return text + ("..." if len(value) > limit else "")


def parse_dumpfile(
    data: bytes | str | os.PathLike[str] | os.PathLike[bytes],
    *,
    limits: Limits | None = None,
    strict: bool = True,
) -> Tree:
    """Parse composefs-dump(5) text into a valid :class:`Tree`.

    ``data`` is the dumpfile text (``bytes`` or ``str``) or the path of a
    file holding it (read as is: a compressed file must be decompressed by
    the caller).  Every problem raises :class:`ValidationError` with
    ``entry`` the 1-based line number, ``path`` the line's path when known
    and ``field`` one of :data:`FIELDS` or ``"xattrs"``.

    Strict (the default) rejects, on top of what ``mkcomposefs`` rejects:
    numbers out of range or not plain decimal (octal for the mode), mode bits
    outside type and permissions, a device number on a non-device or above 32
    bits, a symlink size other than its target's length, a payload, content
    or digest where the type has none, a digest that is not 64 hex digits,
    empty or missing fields, bad escapes, NUL in names and paths, duplicate
    xattr names, a missing final newline.  ``strict=False`` additionally
    accepts what :data:`LENIENT_ALLOWS` lists.

    The tree keeps each non-directory's link count as given (as mkcomposefs
    does); directory sizes and link counts are libcomposefs's to compute and
    are not kept; a symlink's size is its target's length.
    """
    limits = limits or Limits()
    raw = read_source(data, limits.max_input_bytes, "dumpfile", str_errors="surrogateescape")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ValidationError(
            "embedded NUL byte (write it as \\x00)", entry=raw.count(b"\n", 0, nul) + 1
        )
    # counted before the split: a list of a line per newline takes about 20
    # times the input (a pointer and a bytes object for each "\n")
    if raw.count(b"\n") + (not raw.endswith(b"\n")) > limits.max_entries:
        raise ValidationError(f"more than {limits.max_entries} lines")
    lines = raw.split(b"\n")
    last = lines.pop()
    if last:
        if strict:
            raise ValidationError("the last line has no final newline", entry=len(lines) + 1)
        lines.append(last)
    builder = TreeBuilder(
        limits, synthesize_parents=False, duplicates="reject", count_hardlinks=False
    )
    add = builder.add
    parse_line = _line_parser(strict)
    entry = 0
    line = b""
    try:
        for entry, line in enumerate(lines, 1):
            path, node = parse_line(line)
            add(path, node, entry=entry)
        return builder.build()
    except _LineError as err:
        raise ValidationError(
            err.reason, entry=entry, path=_path_of(line), field=err.field
        ) from None
    except _BadEscape as err:
        raise ValidationError(
            f"invalid escape {_show(err.escape)} (use \\xHH, \\\\, \\n, \\r or \\t)",
            entry=entry,
            path=_path_of(line),
            field=_field_of_escape(line),
        ) from None
    except ValidationError as err:
        field = _FIELD_RENAMES.get(err.field or "", err.field)
        if field == err.field:
            raise
        raise ValidationError(err.reason, entry=err.entry, path=err.path, field=field) from None


def _path_of(line: bytes) -> bytes | None:
    """The unescaped path of ``line``, or None if it has none."""
    try:
        return _unescape(line.split(b" ", 1)[0]) or None
    except _BadEscape:
        return None


def _field_of_escape(line: bytes) -> str:
    """The name of the first field of ``line`` holding a bad escape."""
    fields = line.split(b" ", 11)
    for index, field in enumerate(fields):
        try:
            _unescape(field)
        except _BadEscape:
            return FIELDS[index] if index < len(FIELDS) else "xattrs"
    return "xattrs"


def _line_parser(strict: bool) -> Callable[[bytes], tuple[bytes, Node]]:
    uint = _uint
    u32 = _U32_MAX
    u64 = _U64_MAX
    small = _SMALL_INTS
    modes: dict[bytes, int] = {}
    mtimes: dict[bytes, tuple[int, int]] = {}
    unescape = _unescape
    # Whole xattr fields repeat (the same SELinux label on thousands of files):
    # parse each distinct short one once.
    xattr_cache: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
    min_fields = 11 if strict else 9

    def parse_line(line: bytes) -> tuple[bytes, Node]:
        fields = line.split(b" ", 11)
        count = len(fields)
        if count < min_fields:
            raise _LineError(FIELDS[count], f"missing: the line has only {count} fields")
        (
            path_field,
            size_field,
            mode_field,
            nlink_field,
            uid_field,
            gid_field,
            rdev_field,
            mtime_field,
            payload_field,
        ) = fields[:9]
        path = unescape(path_field) if path_field.find(b"\\") >= 0 else path_field
        is_hardlink = mode_field[:1] == b"@"
        if is_hardlink:
            mode_field = mode_field[1:]
        mode = modes.get(mode_field)
        if mode is None:
            mode = _mode(mode_field, strict)
            if len(modes) < _MEMO_SIZE:
                modes[mode_field] = mode
        size = small.get(size_field, -1)
        if size < 0:
            size = uint(size_field, "size", u64)
        nlink = small.get(nlink_field, -1)
        if nlink < 0:
            nlink = uint(nlink_field, "nlink", u32)
        uid = small.get(uid_field, -1)
        if uid < 0:
            uid = uint(uid_field, "uid", u32)
        gid = small.get(gid_field, -1)
        if gid < 0:
            gid = uint(gid_field, "gid", u32)
        rdev = small.get(rdev_field, -1)
        if rdev < 0:
            rdev = uint(rdev_field, "rdev", _RDEV_MAX)
        times = mtimes.get(mtime_field)
        if times is None:
            times = _mtime(mtime_field)
            if len(mtimes) < _MEMO_SIZE:
                mtimes[mtime_field] = times
        mtime, mtime_nsec = times
        if payload_field == b"-":
            payload = None
        elif payload_field:
            payload = unescape(payload_field) if payload_field.find(b"\\") >= 0 else payload_field
        else:
            raise _LineError("payload", "empty (write - for none)")
        content = digest = None
        if count > 9:
            content_field = fields[9]
            if content_field != b"-":
                if not content_field:
                    raise _LineError("content", "empty (write - for none)")
                content = unescape(content_field)
            if count > 10:
                digest_field = fields[10]
                if digest_field != b"-":
                    if not digest_field:
                        raise _LineError("digest", "empty (write - for none)")
                    digest = _digest(digest_field)
        if count == 12:
            xattr_field = fields[11]
            xattrs = xattr_cache.get(xattr_field)
            if xattrs is None:
                xattrs = _xattrs(xattr_field)
                if len(xattr_field) <= _XATTR_CACHE_FIELD and len(xattr_cache) < _XATTR_CACHE_SIZE:
                    xattr_cache[xattr_field] = xattrs
        else:
            xattrs = ()
        ftype = mode & S_IFMT
        target = None
        if is_hardlink:
            if ftype == S_IFDIR:
                raise _LineError("mode", "a directory cannot be a hardlink")
            if payload is None:
                raise _LineError("payload", "a hardlink needs its target's path")
            # The other fields describe the target; mkcomposefs ignores them.
            return path, Hardlink(payload)
        if rdev and ftype != S_IFCHR and ftype != S_IFBLK:
            if strict:
                raise _LineError("rdev", "only character and block devices have one")
            rdev = 0
        if ftype == S_IFREG:
            if content is None and size > _MAX_NONINLINE_SIZE:
                raise _LineError(
                    "size",
                    f"libcomposefs stores at most {_MAX_NONINLINE_SIZE} bytes "
                    f"(1024 chunks) of a file without inline content, got {size}",
                )
        else:
            if ftype == S_IFLNK:
                if payload is None:
                    raise _LineError("payload", "a symlink needs its target")
                if strict and size != len(payload):
                    raise _LineError(
                        "size", f"is {size} but the symlink target is {len(payload)} bytes"
                    )
                target, payload = payload, None
            elif payload is not None:
                raise _LineError("payload", "only regular files, symlinks and hardlinks have one")
            if content is not None:
                raise _LineError("content", "only regular files have inline content")
            if digest is not None:
                raise _LineError("digest", "only regular files have an fs-verity digest")
            # Only a regular file's size is kept: the image computes a directory's and a
            # symlink's, and has none for devices, fifos and sockets.
            size = 0
        return path, Inode(
            mode, nlink, uid, gid, mtime, mtime_nsec, size, rdev, payload, target,
            content, digest, xattrs,
        )  # fmt: skip

    return parse_line


# -- dumping -----------------------------------------------------------------


def _erofs_dir_size(names: list[bytes], is_root: bool) -> int:
    """The ``i_size`` libcomposefs gives a directory holding ``names``.

    Its dirents (12 bytes plus the name, ``.`` and ``..`` included, sorted by
    name) are packed into 4096-byte blocks; a tail over half a block gets a
    block of its own.  The root also holds the overlay whiteouts ``00``..``ff``.
    """
    entries = set(names)
    entries.add(b".")
    entries.add(b"..")
    if is_root:
        entries |= _ROOT_WHITEOUTS
    blocks = 0
    used = 0
    for name in sorted(entries):
        length = _EROFS_DIRENT_SIZE + len(name)
        if used + length > _EROFS_BLKSIZ:
            blocks += 1
            used = 0
        used += length
    if used > _EROFS_BLKSIZ // 2:
        blocks += 1
        used = 0
    return blocks * _EROFS_BLKSIZ + used


def _inode_line(path: str, inode: Inode, size: int, link_to: str | None) -> str:
    mode = inode.mode
    ftype = mode & S_IFMT
    if link_to is not None:
        payload = link_to
    elif ftype == S_IFLNK:
        payload = _escape_optional(inode.symlink_target)
    elif ftype == S_IFREG:
        payload = _escape_optional(inode.payload)
    else:
        payload = "-"
    content = _escape_optional(inode.content) if inode.content else "-"
    digest = inode.fsverity_digest.hex() if inode.fsverity_digest is not None else "-"
    head = (
        f"{path} {size} {'@' if link_to is not None else ''}{mode:o} {inode.nlink} "
        f"{inode.uid} {inode.gid} {inode.rdev} {inode.mtime}.{inode.mtime_nsec} "
        f"{payload} {content} {digest}"
    )
    if not inode.xattrs:
        return head + "\n"
    xattrs = " ".join(
        [f"{_escape_equal(name)}={_escape_equal(value)}" for name, value in inode.xattrs]
    )
    return f"{head} {xattrs}\n"


def _size_of(inode: Inode, path: bytes, children: dict[bytes, list[bytes]]) -> int:
    ftype = inode.mode & S_IFMT
    if ftype == S_IFREG:
        return inode.size
    if ftype == S_IFLNK:
        return len(inode.symlink_target or b"")
    if ftype == S_IFDIR:
        return _erofs_dir_size(children.get(path, []), path == ROOT)
    return 0


def dump(tree: Tree) -> str:
    """Return the composefs-dump(5) text of ``tree``.

    The text is what ``composefs-info dump`` prints for the image
    libcomposefs writes from ``tree``, byte for byte: directory sizes as
    EROFS stores them, hardlinks as ``@`` lines repeating their inode's
    attributes, xattrs sorted by name, non-printable bytes escaped.  It is
    ASCII.  A hardlink group's inode stays at the path the tree has it
    (``mkcomposefs --from-file`` on this text writes the same image as
    :func:`~composefs_py.writer.write_image`; the path changes the image
    bytes), while ``composefs-info`` prints it at the group's first path.
    """
    children: dict[bytes, list[bytes]] = {}
    for path in tree.paths:
        if path != ROOT:
            children.setdefault(parent_of(path), []).append(name_of(path))
    out: list[str] = []
    append = out.append
    for path, node in tree:
        if isinstance(node, Hardlink):
            target = node.target
            inode = tree.inode(target)
            link_to: str | None = _escape(target)
        else:
            target, inode, link_to = path, node, None
        append(_inode_line(_escape(path), inode, _size_of(inode, target, children), link_to))
    return "".join(out)


def dump_bytes(tree: Tree) -> bytes:
    """:func:`dump` as ASCII bytes, ready for ``mkcomposefs --from-file``."""
    return dump(tree).encode("ascii")
