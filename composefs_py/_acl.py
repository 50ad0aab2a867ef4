"""POSIX ACL xattr values (``system.posix_acl_access`` / ``_default``).

The kernel parses these values itself: a mounted image whose file carries a
malformed one shows it as unreadable (``getxattr`` fails with EINVAL or
EOPNOTSUPP) and the permission check of that file has no ACL to use.  A
layer's TOC is untrusted, so its ACLs are held to what the kernel accepts
from ``setxattr`` (``posix_acl_from_xattr`` then ``posix_acl_valid``):

* a 4-byte header, version 2, then 8-byte entries ``(tag, perm, id)``, all
  little-endian; the header alone (no entry) means "no ACL";
* tags in the order USER_OBJ, USER*, GROUP_OBJ, GROUP*, [MASK], OTHER, with
  MASK required when there is a USER or GROUP entry;
* permissions within rwx (0..7);
* USER and GROUP ids other than 4294967295 (no such id).

The dumpfile path does not apply this: composefs-dump(5) is the image's own
description, mkcomposefs takes any value, and upstream's checksum assets
carry a malformed ACL on purpose.
"""

from __future__ import annotations

import struct

__all__ = ["ACL_XATTR_NAMES", "posix_acl_problem"]

ACL_XATTR_NAMES = frozenset((b"system.posix_acl_access", b"system.posix_acl_default"))

_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_USER_OBJ = 0x01
_USER = 0x02
_GROUP_OBJ = 0x04
_GROUP = 0x08
_MASK = 0x10
_OTHER = 0x20
_NO_ID = 0xFFFFFFFF
_TAG_NAMES = {
    _USER_OBJ: "USER_OBJ",
    _USER: "USER",
    _GROUP_OBJ: "GROUP_OBJ",
    _GROUP: "GROUP",
    _MASK: "MASK",
    _OTHER: "OTHER",
}
# The states of the kernel's posix_acl_valid() walk.
_EXPECT_USER_OBJ, _IN_USERS, _IN_GROUPS, _EXPECT_OTHER, _DONE = range(5)


def posix_acl_problem(value: bytes) -> str | None:
    """What is wrong with a POSIX ACL xattr value, or None if the kernel takes it."""
    if len(value) < _HEADER.size:
        return f"a POSIX ACL needs a {_HEADER.size}-byte header, got {len(value)} bytes"
    (version,) = _HEADER.unpack_from(value)
    if version != _VERSION:
        return f"POSIX ACL version must be {_VERSION}, got {version}"
    body = len(value) - _HEADER.size
    if body % _ENTRY.size:
        return f"POSIX ACL entries are {_ENTRY.size} bytes each, got {body} bytes after the header"
    if not body:
        return None
    state = _EXPECT_USER_OBJ
    needs_mask = False
    for number, (tag, perm, ident) in enumerate(_ENTRY.iter_unpack(value[_HEADER.size :])):
        where = f"POSIX ACL entry {number}"
        if perm & ~0o7:
            return f"{where}: permissions must be within rwx (0..7), got {perm:#x}"
        if tag == _USER_OBJ and state == _EXPECT_USER_OBJ:
            state = _IN_USERS
        elif tag == _GROUP_OBJ and state == _IN_USERS:
            state = _IN_GROUPS
        elif tag in (_USER, _GROUP) and state == (_IN_USERS if tag == _USER else _IN_GROUPS):
            if ident == _NO_ID:
                return f"{where}: a {_TAG_NAMES[tag]} entry needs an id, got {_NO_ID}"
            needs_mask = True
        elif tag == _MASK and state == _IN_GROUPS:
            state = _EXPECT_OTHER
        elif tag == _OTHER and (state == _EXPECT_OTHER or (state == _IN_GROUPS and not needs_mask)):
            state = _DONE
        elif tag in _TAG_NAMES:
            return (
                f"{where}: {_TAG_NAMES[tag]} is out of place (the order is USER_OBJ, USER..., "
                "GROUP_OBJ, GROUP..., MASK (needed with USER or GROUP entries), OTHER)"
            )
        else:
            return f"{where}: unknown tag {tag:#x}"
    if state != _DONE:
        return (
            "POSIX ACL is incomplete: it needs USER_OBJ, GROUP_OBJ, OTHER, and MASK "
            "when it has USER or GROUP entries"
        )
    return None
