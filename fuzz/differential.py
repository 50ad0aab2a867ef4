"""Differential checks against the peers (:mod:`fuzz.peers`): a disagreement is a finding.

``toc-diff``
    a TOC through podman's path (containers/storage's ``unmarshalToc`` +
    ``GenerateDump``, then ``mkcomposefs --from-file``) and through
    ``parse_toc(..., compat="containers-storage")`` + the native writer.
    Where both accept, the images must be equal byte for byte; where one
    side refuses, the refusal must match a row of :data:`TOC_DIFFERENCES`
    (the refusing side, the field and the reason).
``dumpfile-diff``
    a dumpfile through ``mkcomposefs --from-file`` and through
    ``parse_dumpfile`` + the native writer (same versions as mkcomposefs's
    defaults, 0..1); equal images where both accept, a row of
    :data:`DUMPFILE_DIFFERENCES` where one side refuses.

Each row names its class: ``stricter`` (our rule refuses on purpose what the
peer takes), ``their bug`` (the peer takes it and makes a wrong or dangerous
image of it, or refuses valid input) or ``our bug`` (to fix here; none
stands).  fuzz/CAMPAIGNS.md has the tables with an example each, and
``tests/test_fuzz_differential.py`` runs every example.

Cost: every comparison is bounded by the inputs' size (the fuzzers' -max_len)
and the validators' :class:`~composefs_py.limits.Limits`; the peers run with
:data:`fuzz.peers.TIMEOUT`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from composefs_py.dumpfile import FIELDS as FIELDS_ORDER
from composefs_py.dumpfile import parse_dumpfile
from composefs_py.errors import ValidationError
from composefs_py.model import Tree
from composefs_py.strategies import Pairs, render_json
from composefs_py.toc import parse_toc
from fuzz.peers import PeerResult, TocPeer, mkcomposefs_image

__all__ = [
    "DUMPFILE_DIFFERENCES",
    "DUMPFILE_EXAMPLES",
    "TOC_DIFFERENCES",
    "TOC_EXAMPLES",
    "Difference",
    "Verdict",
    "compare_dumpfile",
    "compare_toc",
]

STRICTER = "stricter"
THEIR_BUG = "their bug"
OUR_BUG = "our bug"


@dataclass(frozen=True, slots=True)
class Difference:
    """A known one-sided acceptance: who refuses, how it reads, which class, why."""

    label: str
    #: The side that refuses: "compat"/"podman" (TOC), "ours"/"mkcomposefs" (dumpfile).
    refuser: str
    #: Our ValidationError's field (None: the document as a whole); ignored when the peer refuses.
    fields: frozenset[str | None]
    #: Searched in our ValidationError's reason, or in the peer's error text.
    reason: str
    kind: str
    why: str
    #: Searched in our ValidationError's path, when given (e.g. a NUL in it).
    path: str = ""
    #: Only where the refused line is a dumpfile's hardlink line ('@' mode).
    hardlink: bool = False

    def matches(
        self,
        refuser: str,
        field: str | None,
        text: str,
        path: str | None = None,
        hardlink: bool = False,
    ) -> bool:
        if refuser != self.refuser:
            return False
        if refuser in ("compat", "ours") and field not in self.fields:
            return False
        if self.path and re.search(self.path, path or "") is None:
            return False
        if self.hardlink and not hardlink:
            return False
        return re.search(self.reason, text) is not None


def _fields(*names: str | None) -> frozenset[str | None]:
    return frozenset(names)


_TIMES = _fields("modtime", "accesstime", "changetime")

#: compat's refusals of TOCs podman's path takes (and the reverse, none so far).
TOC_DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "duplicate_key", "compat", _fields(None), r"duplicate key",
        STRICTER,
        "a repeated key: podman takes the last one (and appends a second 'entries'); other JSON "
        "readers may take the first, so duplicate keys are refused in every mode",
    ),
    Difference(
        "json_lenient", "compat", _fields(None),
        r"^not valid JSON|^the TOC must be a JSON object",
        THEIR_BUG,
        "not JSON, or not an object, yet podman takes it: jsoniter's ConfigFastest reads `null`, "
        "a lone `}` and other malformed text as an empty TOC (an empty layer)",
    ),
    Difference(
        "utf8", "compat", _fields(None), r"not valid UTF-8", STRICTER,
        "a TOC that is not UTF-8: JSON text is UTF-8 (RFC 8259); Go keeps the bytes",
    ),
    Difference(
        "json_depth", "compat", _fields(None), r"nesting is deeper than", STRICTER,
        "JSON nested deeper than Limits.max_json_depth (an unknown key's value, which podman "
        "skips): a bound on the parser's cost and stack",
    ),
    Difference(
        "entries_missing", "compat", _fields("entries"), r"must be an array, got null", STRICTER,
        "no 'entries' (or null): podman reads an empty layer; compat wants the array",
    ),
    Difference(
        "name_missing", "compat", _fields("name"), r"must be a string, got null", THEIR_BUG,
        "an entry without a name: podman reads '' as the root, so a nameless directory "
        "replaces the root's metadata (a nameless chunk row is skipped)",
    ),
    Difference(
        "dotdot_above", "compat", _fields("name", "linkName"), r"climb above the root",
        STRICTER,
        "a '..' that climbs above the root: podman clamps it at '/', so '../etc/x' lands on "
        "/etc/x; tar refuses such a name, and compat does too (a traversal attempt)",
    ),
    Difference(
        "version", "compat", _fields("version"), r"^must be 1, got",
        STRICTER,
        "a version other than 1, or none: podman never reads it; a format of unknown version "
        "is refused",
    ),
    Difference(
        "key_case", "compat", _fields(None, "name", "type"), r"must be spelled",
        STRICTER,
        "a known key in another case ('Name', 'MODE'): podman matches keys case-insensitively; "
        "other JSON readers take them as unknown keys, so the document means two things",
    ),
    Difference(
        "null_string", "compat", _fields("linkName", "digest", "name", "xattrs", "type"),
        r"must not be null",
        STRICTER,
        "null where a string or object goes: podman reads it as empty; a null is not a value",
    ),
    Difference(
        "mode_bits", "compat", _fields("mode"),
        r"file type bits .* do not match type|must be an integer in 0\.\.65535",
        THEIR_BUG,
        "type bits in mode that disagree with type, or bits beyond 0o177777: podman ORs them "
        "into the type (a dir with 0o100644 becomes a socket)",
    ),
    Difference(
        "ids", "compat", _fields("uid", "gid"), r"must be an integer in 0\.\.4294967294",
        THEIR_BUG,
        "uid/gid outside 0..4294967294: podman writes -1 as 4294967295 (no id) and wraps "
        "larger values (4294967296 becomes root)",
    ),
    Difference(
        "device_range", "compat", _fields("devMajor", "devMinor"),
        r"must be an integer in 0\.\.(4095|1048575)",
        THEIR_BUG,
        "a device major above 4095 or minor above 2^20-1: EROFS keeps a 32-bit rdev, so "
        "podman's image holds another device than the TOC names",
    ),
    Difference(
        "xattr_name", "compat", _fields("xattrs"), r"has no known prefix",
        STRICTER,
        "an xattr name without a known prefix (user., trusted., security., system.posix_acl_*)",
    ),
    Difference(
        "acl_value", "compat", _fields("xattrs"), r"POSIX ACL", STRICTER,
        "a system.posix_acl_* value that is not a POSIX ACL (header, entry size, tags): the "
        "kernel refuses to set such a value (EINVAL), podman stores the bytes",
    ),
    Difference(
        "trusted_overlay", "compat", _fields("xattrs"), r"is overlayfs metadata",
        STRICTER,
        "an input's own trusted.overlay.* xattr: refused so it can never act as overlay metadata",
    ),
    Difference(
        "reg_no_digest", "compat", _fields("digest"), r"required for a regular file with data",
        STRICTER,
        "a regular file with data and no digest: podman writes a file with no payload",
    ),
    Difference(
        "linkname_other", "compat", _fields("linkName"), r"only symlinks and hardlinks have one",
        THEIR_BUG,
        "a linkName on a regular file, directory, device or chunk: podman makes it the file's "
        "payload path (not an object name) and counts it as a hard link",
    ),
    Difference(
        "time_lenient", "compat", _TIMES, r"must be an RFC 3339 date-time string",
        STRICTER,
        "a time only Go's lenient fallback parser takes (',' before the fraction, an offset "
        "of 24 hours)",
    ),
    Difference(
        "chunk_rows", "compat",
        _fields("name", "chunkSize", "chunkOffset", "chunkDigest", "offset", "endOffset",
                "chunkType"),
        r"chunk|offset|endOffset|chain|sha256:|larger than the file|must be \d|must be an integer",
        STRICTER,
        "chunk rows and offsets: podman checks them when it fetches contents, not here; "
        "compat checks each chain up front",
    ),
    Difference(
        "name_long", "compat", _fields("name", "linkName"),
        r"component longer than 255 bytes|longer than 4095 bytes", STRICTER,
        "a path component longer than NAME_MAX (255 bytes) or a path longer than 4095: "
        "podman and mkcomposefs write it, and no lookup on the mount can reach the file",
    ),
    Difference(
        "unicode", "compat", _fields("name", "linkName", "xattrs", "digest", "type"),
        r"valid Unicode", STRICTER,
        "a string with a lone surrogate escape (\\ud800): not Unicode text; Go's decoder "
        "makes it U+FFFD, so the name in the image is not the one the TOC spells",
    ),
    Difference(
        "type_missing", "compat", _fields("type"), r"got null", STRICTER,
        "an entry without 'type' (or with the key spelled in another case, which podman "
        "reads): podman takes it as the root or an unknown type",
    ),
    Difference(
        "repeat_spelled", "compat", _fields("name"), r"repeats entry \d+ with different data",
        STRICTER,
        "a repeat that podman finds equal though written differently (a time with '.0', the "
        "same instant in another zone): compat compares the JSON values",
    ),
    Difference(
        "nul_name", "compat", _fields("name", "linkName", "xattrs"),
        r"must not contain NUL|without NUL",
        STRICTER,
        "a NUL in a name, target or xattr name",
    ),
)  # fmt: skip

_NUMBERS = _fields("size", "mode", "nlink", "uid", "gid", "rdev", "mtime")
_OPTIONAL = _fields("payload", "content", "digest")

#: parse_dumpfile's refusals of dumpfiles mkcomposefs (1.0.8, without
#: ``CFS_PARSE_STRICT``) takes, and the reverse.  First match wins.
DUMPFILE_DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "hardlink_fields", "ours",
        _fields("size", "nlink", "uid", "gid", "rdev", "mtime", *_OPTIONAL - {"payload"},
                "xattrs"),
        r"", STRICTER,
        "a malformed SIZE, NLINK, UID, GID, RDEV, MTIME, CONTENT, DIGEST or xattr on a hardlink "
        "line: mkcomposefs reads only PATH, MODE and PAYLOAD there (composefs-dump(5): the "
        "other fields are ignored); parse_dumpfile checks every field of every line",
        hardlink=True,
    ),
    Difference(
        "hardlink_target", "ours", _fields("payload"),
        r"hardlink target must be an absolute path|"
        r"hardlink target ['\"].*(//|/['\"] does not exist$)",
        STRICTER,
        "a hardlink target that is not a clean absolute path ('d/f', '/d//f', '/d/'): "
        "mkcomposefs skips every '/' run when it looks the target up, parse_dumpfile looks up "
        "the path as written; '/d/' names the directory /d there, a directory hard link "
        "(hardlink_dir)",
    ),
    Difference(
        "path_nul", "ours", _fields("path"), r"clean absolute path", THEIR_BUG,
        "a path with an escaped NUL (\\x00): mkcomposefs unescapes it into a C string and "
        "cuts the name there, so '/a\\x00b' becomes '/a'", path=r"\x00",
    ),
    Difference(
        "path_unclean", "ours", _fields("path"), r"clean absolute path", STRICTER,
        "a path that is relative or not clean ('rel', '/a//b', '/a/'): composefs-dump(5) paths "
        "are absolute and clean; mkcomposefs looks the parts up as it can",
    ),
    Difference(
        "path_long", "ours", _fields("path"), r"longer than 4095 bytes", STRICTER,
        "a path longer than PATH_MAX - 1 (4095 bytes): mkcomposefs takes it, and the file "
        "cannot be opened by its path on the mount",
    ),
    Difference(
        "payload_bytes", "ours", _fields("payload"), r"bytes without NUL", THEIR_BUG,
        "a payload with an escaped NUL (mkcomposefs cuts the backing path at it) or longer than "
        "4095 bytes (an overlay redirect no lookup can follow)",
    ),
    Difference(
        "xattr_name_nul", "ours", _fields("xattrs"), r"name must be \d+\.\.\d+ bytes without NUL",
        THEIR_BUG,
        "an xattr name with an escaped NUL: mkcomposefs cuts the name at it (another name, "
        "or a duplicate of one that follows); a name over 255 bytes without one it refuses "
        "too",
    ),
    Difference(
        "xattr_prefix_only", "ours", _fields("xattrs"), r"is only a namespace prefix", STRICTER,
        "an xattr name that is only a namespace prefix ('user.'): the kernel's setxattr "
        "refuses it (EINVAL), mkcomposefs stores it",
    ),
    Difference(
        "xattr_field", "ours", _fields("xattrs"), r"expected NAME=VALUE", STRICTER,
        "a field after DIGEST that is not NAME=VALUE where mkcomposefs does not read it: the "
        "empty one after a trailing space (it stops at the line's end; on a hardlink line it "
        "reads none, see hardlink_fields); elsewhere it refuses it too ('Missing = in xattr')",
    ),
    Difference(
        "overlay_xattr", "ours", _fields("xattrs"), r"is overlayfs metadata", STRICTER,
        "an xattr named trusted.overlay.* (but opaque): libcomposefs escapes it, yet it is "
        "refused so that an input can never pose as overlay metadata "
        "(Limits.allow_overlay_xattrs=True takes it)",
    ),
    Difference(
        "payload_object", "ours", _fields("payload"), r"must name an object of the store",
        STRICTER,
        "a regular file's payload that is not an object path (2 hex digits, '/', 62): "
        "mkcomposefs writes any string as the overlay redirect to the backing file",
    ),
    Difference(
        "duplicate_xattr", "ours", _fields("xattrs"), r"appears twice", STRICTER,
        "an xattr name given twice on a line: mkcomposefs keeps the last value; the text means "
        "two things, so it is refused",
    ),
    Difference(
        "rdev_other", "ours", _fields("rdev"), r"only character and block devices have one",
        STRICTER,
        "a device number on a non-device: mkcomposefs ignores it (its CFS_PARSE_STRICT refuses "
        "it: 'Non-zero devnum on non-device'); parse_dumpfile(strict=False) ignores it too",
    ),
    Difference(
        "numbers", "ours", _NUMBERS,
        r"must be (a decimal|an octal) integer|must be .*digits|out of range|"
        r"must be SECONDS\.NANOSECONDS|seconds must be in", THEIR_BUG,
        "a number strtoull takes and libcomposefs truncates or wraps: '-1' is 2^64-1, '+5' and "
        "' 5' are 5, a uid above 2^32-1 or a device number above 32 bits is cut to 32 bits "
        "(0x100000000 becomes 0:0, a whiteout)",
    ),
    Difference(
        "mode_bits", "ours", _fields("mode"), r"bits|file type|mode", STRICTER,
        "mode bits beyond type and permissions, or an unknown type: mkcomposefs keeps what "
        "lcfs_node_try_set_mode takes and the image drops the rest",
    ),
    Difference(
        "digest_form", "ours", _fields("digest"), r"hexadecimal digits", THEIR_BUG,
        "a digest that is not 64 hex digits: mkcomposefs ignores digest_to_raw's failure and "
        "writes the bytes it decoded followed by uninitialized stack bytes as the fs-verity "
        "digest ('abcd' gave abcd000...0 here)",
    ),
    Difference(
        "type_fields", "ours", _OPTIONAL | _fields("size"),
        r"only regular files|only symlinks|has none|where the type", STRICTER,
        "a payload, inline content or digest on a type that has none (content on a directory, "
        "a payload on a FIFO, "
        "a digest on a symlink): mkcomposefs stores or ignores it; refused as meaningless",
    ),
    Difference(
        "symlink_size", "ours", _fields("size"), r"symlink target is", STRICTER,
        "a symlink size other than its target's length: mkcomposefs ignores it (its "
        "CFS_PARSE_STRICT refuses it); podman writes 0 there, parse_dumpfile(strict=False) "
        "takes it",
    ),
    Difference(
        "field_count", "ours", _fields(None, *FIELDS_ORDER), r"missing: the line has only|empty",
        STRICTER,
        "a line with fewer than eleven fields, or an empty field: mkcomposefs reads what is "
        "missing as empty (absent payload, content, digest)",
    ),
    Difference(
        "hardlink_dir", "ours", _fields("payload"), r"hardlink to a directory", THEIR_BUG,
        "a hardlink ('@' mode) whose target is a directory: mkcomposefs links the directory "
        "inode a second time (a directory hard link, which no filesystem may hold)",
    ),
    Difference(
        "final_newline", "ours", _fields(None), r"no final newline", STRICTER,
        "a last line without a newline, a sign of a truncated file: mkcomposefs takes it (its "
        "CFS_PARSE_STRICT does not); parse_dumpfile(strict=False) takes it",
    ),
    Difference(
        "line_cap", "mkcomposefs", _fields(), r"Too many xattrs", STRICTER,
        "a line whose xattrs take more than 65535 bytes: mkcomposefs caps the line against its "
        "quadratic duplicate check; parse_dumpfile is linear and the writer takes it",
    ),
)  # fmt: skip


def _toc(*entries: dict[str, Any] | Pairs, **top: Any) -> bytes:
    return render_json({"version": 1, **top, "entries": list(entries)})


_D1 = "sha256:" + "1" * 64
_REG = {"type": "reg", "name": "a", "size": 3, "digest": _D1}

#: An example of each row of TOC_DIFFERENCES (fuzz/CAMPAIGNS.md shows them;
#: tests/test_fuzz_differential.py checks each is explained by its row).
TOC_EXAMPLES: dict[str, bytes] = {
    "duplicate_key": _toc(Pairs((*_REG.items(), ("uid", 5), ("uid", 6)))),
    "json_lenient": b"null",
    "utf8": b'{"version":1,"entries":[],"\\xff":1}'.replace(b"\\xff", b"\xff"),
    "entries_missing": b'{"version":1}',
    "json_depth": _toc({**_REG, "x": json.loads("[" * 40 + "]" * 40)}),
    "acl_value": _toc({**_REG, "xattrs": {"system.posix_acl_access": "eA=="}}),
    "name_missing": _toc({"type": "dir", "mode": 0o700}),
    "dotdot_above": _toc({"type": "reg", "name": "../x"}),
    "version": render_json({"version": 2, "entries": [_REG]}),
    "key_case": _toc({**_REG, "Mode": 0o700}),
    "null_string": _toc({**_REG, "linkName": None}),
    "mode_bits": _toc({"type": "dir", "name": "d", "mode": 0o100644}),
    "ids": _toc({**_REG, "uid": 4294967296}),
    "device_range": _toc({"type": "char", "name": "c", "devMajor": 5000, "devMinor": 1}),
    "xattr_name": _toc({**_REG, "xattrs": {"system.foo": "eA=="}}),
    "trusted_overlay": _toc({**_REG, "xattrs": {"trusted.overlay.redirect": "eA=="}}),
    "reg_no_digest": _toc({"type": "reg", "name": "a", "size": 9}),
    "linkname_other": _toc({**_REG, "linkName": "x/y"}),
    "time_lenient": _toc({**_REG, "modtime": "2020-01-01T00:00:00,5Z"}),
    "name_long": _toc({"type": "reg", "name": "n" * 256}),
    "unicode": _toc({**_REG, "name": "a\ud800"}),
    "type_missing": _toc({"Type": "dir", "name": "./"}),
    "chunk_rows": _toc({**_REG, "chunkSize": 1},
                       {"type": "chunk", "name": "a", "chunkOffset": 1, "chunkSize": 1}),
    "repeat_spelled": _toc({**_REG, "modtime": "2020-01-01T00:00:00Z"},
                           {**_REG, "modtime": "2020-01-01T00:00:00.0Z"}),
    "nul_name": _toc({"type": "reg", "name": "a\0b"}),
}  # fmt: skip

_ROOT = b"/ 0 40755 2 0 0 0 0.0 - - -\n"


def _deep_path() -> bytes:
    """21 directories of 200-byte names, then a file: a path of 4,223 bytes."""
    lines, path = [_ROOT], b""
    for i in range(21):
        path += b"/" + bytes([0x61 + i]) * 200
        lines.append(path + b" 0 40755 2 0 0 0 0.0 - - -\n")
    return b"".join([*lines, path + b"/f 0 100644 1 0 0 0 0.0 - - -\n"])


def _lines(*lines: bytes) -> bytes:
    """A dumpfile of the root and ``lines``."""
    return _ROOT + b"".join(line + b"\n" for line in lines)


def _file(fields: bytes, name: bytes = b"/f") -> bytes:
    return _ROOT + name + b" " + fields + b"\n"


#: An example of each row of DUMPFILE_DIFFERENCES.
DUMPFILE_EXAMPLES: dict[str, bytes] = {
    "path_nul": _file(b"0 100644 1 0 0 0 0.0 - - -", b"/a\\x00b"),
    "path_unclean": _file(b"0 100644 1 0 0 0 0.0 - - -", b"rel"),
    "path_long": _deep_path(),
    "payload_bytes": _file(b"3 100644 1 0 0 0 0.0 ab/c\\x00d - -"),
    "xattr_name_nul": _file(b"0 100644 1 0 0 0 0.0 - - - user.a\\x00b=1"),
    "xattr_prefix_only": _file(b"0 100644 1 0 0 0 0.0 - - - user.=1"),
    "xattr_field": _file(b"0 100644 1 0 0 0 0.0 - - - user.a=1 "),
    "overlay_xattr": _file(b"0 100644 1 0 0 0 0.0 - - - trusted.overlay.redirect=/x"),
    "payload_object": _file(b"3 100644 1 0 0 0 0.0 ab/cd - -"),
    "duplicate_xattr": _file(b"0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=2"),
    "rdev_other": _file(b"0 100644 1 0 0 5 0.0 - - -"),
    "numbers": _file(b"-1 100644 1 0 0 0 0.0 - - -"),
    "mode_bits": _file(b"0 1100644 1 0 0 0 0.0 - - -"),
    "digest_form": _file(b"10 100644 1 0 0 0 0.0 ab/cd - abcd"),
    "type_fields": _file(b"3 40755 2 0 0 0 0.0 - abc -", b"/d"),
    "symlink_size": _file(b"0 120777 1 0 0 0 0.0 target - -", b"/s"),
    "field_count": _file(b"0 100644 1 0 0 0 0.0 - -"),
    "hardlink_dir": _ROOT + b"/d 0 40755 2 0 0 0 0.0 - - -\n/h 0 @100644 1 0 0 0 0.0 /d - -\n",
    "final_newline": _ROOT + b"/f 0 100644 1 0 0 0 0.0 - - -",
    "hardlink_fields": _lines(
        b"/f 0 100644 1 0 0 0 0.0 - - -", b"/h 0 @100644 1 0 0 0 0.0 /f - \\f"
    ),
    "hardlink_target": _lines(
        b"/d 0 40755 2 0 0 0 0.0 - - -",
        b"/d/f 0 100644 1 0 0 0 0.0 - - -",
        b"/h 0 @100644 1 0 0 0 0.0 d//f - -",
    ),
    "line_cap": _file(b"0 100644 1 0 0 0 0.0 - - - user.a=" + b"\\xff" * 16400),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one differential comparison."""

    #: "both refuse", "both accept" (equal images), "explained" or "finding".
    outcome: str
    #: The row of the table that explains a one-sided acceptance.
    difference: Difference | None = None
    detail: str = ""

    @property
    def finding(self) -> bool:
        return self.outcome == "finding"


def _explain(
    table: tuple[Difference, ...],
    refuser: str,
    field: str | None,
    text: str,
    detail: str,
    path: str | None = None,
    hardlink: bool = False,
) -> Verdict:
    for row in table:
        if row.matches(refuser, field, text, path, hardlink):
            return Verdict("explained", row, detail)
    return Verdict("finding", None, f"unexplained one-sided acceptance: {detail}")


def _native_image(tree: Tree) -> bytes:
    from composefs_py import _native

    fd = os.memfd_create("cfspy-diff", 0)
    try:
        _native.write_tree(tree, fd, min_version=0, max_version=1)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _image_of_dump(text: bytes) -> bytes | None:
    """The image our parser and writer make of a dump podman wrote (None: refused).

    Lenient: podman writes every symlink's size as 0, which mkcomposefs
    ignores outside its ``CFS_PARSE_STRICT`` (a row of
    :data:`DUMPFILE_DIFFERENCES`).
    """
    try:
        return _native_image(parse_dumpfile(text, strict=False))
    except ValidationError:
        return None


_peer: TocPeer | None = None


def toc_peer() -> TocPeer:
    """The process-wide :class:`TocPeer` (started on first use)."""
    global _peer
    if _peer is None:
        _peer = TocPeer()
    return _peer


def compare_toc(data: bytes, peer: TocPeer | None = None) -> Verdict:
    """podman's path against compat + the native writer on the TOC ``data``."""
    theirs = (peer or toc_peer())(data)
    if theirs.crashed:
        return Verdict("finding", None, f"podman's parser crashed: {theirs.error}")
    try:
        tree = parse_toc(data, compat="containers-storage")
    except ValidationError as error:
        if not theirs.ok:
            return Verdict("both refuse")
        # Several problems (a document-level check collects them): one explained suffices.
        for problem in error.problems:
            verdict = _explain(
                TOC_DIFFERENCES, "compat", problem.field, problem.reason,
                f"compat refuses ({error}), podman's path takes it",
            )  # fmt: skip
            if not verdict.finding:
                # (whether mkcomposefs would take podman's dump changes nothing then:
                # not asked, a process less per refused TOC)
                return verdict
        made = mkcomposefs_image(theirs.output)
        if made.crashed:
            return Verdict("finding", None, f"mkcomposefs crashed on podman's dump: {made.error}")
        if not made.ok:  # podman's path stops at mkcomposefs
            return Verdict("both refuse")
        return verdict
    ours = _native_image(tree)
    if not theirs.ok:
        return _explain(
            TOC_DIFFERENCES, "podman", None, theirs.error,
            f"podman refuses ({theirs.error}), compat takes it",
        )  # fmt: skip
    if _image_of_dump(theirs.output) == ours:
        return Verdict("both accept")
    # Our reading of podman's dump differs from ours: ask mkcomposefs itself.
    made = mkcomposefs_image(theirs.output)
    if made.crashed:
        return Verdict("finding", None, f"mkcomposefs crashed on podman's dump: {made.error}")
    if not made.ok:
        return _explain(
            TOC_DIFFERENCES, "podman", None, made.error,
            f"mkcomposefs refuses podman's dump ({made.error}), compat takes the TOC",
        )  # fmt: skip
    if made.output != ours:
        return Verdict("finding", None, "images differ:\n" + _dump_diff(theirs.output, tree))
    if _image_of_dump(theirs.output) is not None:  # parse_dumpfile reads it otherwise
        return Verdict("finding", None, "parse_dumpfile makes another image of podman's dump")
    # parse_dumpfile refuses podman's dump: the dumpfile-diff target's business.
    return Verdict("both accept", None, "parse_dumpfile refuses podman's dump")


def _dump_diff(theirs: bytes, tree: Tree) -> str:
    import difflib

    from composefs_py.dumpfile import dump

    lines = difflib.unified_diff(
        theirs.decode(errors="replace").splitlines(),
        dump(tree).splitlines(),
        "podman",
        "compat",
        lineterm="",
        n=1,
    )
    return "\n".join(list(lines)[:60])


def _hardlink_line(data: bytes, entry: int | None) -> bool:
    """Whether line ``entry`` (from 1) of the dumpfile is a hardlink line: MODE starts with '@'."""
    if entry is None:
        return False
    lines = data.split(b"\n", entry)
    fields = lines[entry - 1].split(b" ", 3) if len(lines) >= entry else []
    return len(fields) > 2 and fields[2].startswith(b"@")


def compare_dumpfile(data: bytes, peer: Callable[[bytes], PeerResult] | None = None) -> Verdict:
    """``mkcomposefs --from-file`` against ``parse_dumpfile`` + the native writer.

    ``peer`` runs mkcomposefs (default :func:`~fuzz.peers.mkcomposefs_image`:
    the fork server when built, else a process per input).
    """
    ask = peer or mkcomposefs_image
    try:
        tree = parse_dumpfile(data)
    except ValidationError as error:
        refused = _explain(
            DUMPFILE_DIFFERENCES, "ours", error.field, error.reason,
            f"parse_dumpfile refuses ({error}), mkcomposefs takes it", error.path,
            _hardlink_line(data, error.entry),
        )  # fmt: skip
        if not refused.finding:
            # A listed refusal: whether mkcomposefs takes the text changes nothing
            # then (not asked, a round trip less per refused input).
            return refused
        theirs = ask(data)
        if theirs.crashed:
            return Verdict("finding", None, f"mkcomposefs crashed: {theirs.error}")
        return Verdict("both refuse") if not theirs.ok else refused
    theirs = ask(data)
    if theirs.crashed:
        return Verdict("finding", None, f"mkcomposefs crashed: {theirs.error}")
    if not theirs.ok:
        return _explain(
            DUMPFILE_DIFFERENCES, "mkcomposefs", None, theirs.error,
            f"mkcomposefs refuses ({theirs.error}), parse_dumpfile takes it",
        )  # fmt: skip
    if _native_image(tree) != theirs.output:
        return Verdict("finding", None, "images differ")
    return Verdict("both accept")


def markdown_table(table: tuple[Difference, ...], examples: dict[str, bytes]) -> str:
    """The rows of ``table`` as fuzz/CAMPAIGNS.md shows them (label, refuser, class, example)."""
    lines = ["| label | refuses | class | example | why |", "| --- | --- | --- | --- | --- |"]
    for row in table:
        example = examples[row.label]
        shown = example if len(example) <= 90 else example[:60] + b"..." + example[-20:]
        text = shown.decode("utf-8", "backslashreplace").replace("\n", "\\n").replace("|", "\\|")
        why = row.why.replace("|", "\\|")
        lines.append(f"| `{row.label}` | {row.refuser} | {row.kind} | `{text}` | {why} |")
    return "\n".join(lines) + "\n"
