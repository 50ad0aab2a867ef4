"""mkcomposefs's build flags, applied to a :class:`~composefs_py.model.Tree`.

``--use-epoch``, ``--skip-xattrs``, ``--user-xattrs`` and ``--skip-devices``
mean here what libcomposefs gives them (``LCFS_BUILD_*``, ``lcfs_build``):

* ``use_epoch``: every inode's mtime is 0 (seconds and nanoseconds);
* ``skip_xattrs``: no inode keeps an xattr;
* ``user_xattrs``: an inode keeps only its ``user.*`` xattrs; with
  ``skip_xattrs`` it is a contradiction (libcomposefs: EINVAL), refused;
* ``skip_devices``: no character or block device is kept (a whiteout, char
  0/0, is one), nor a hardlink to one; the markers libcomposefs writes on a
  directory holding whiteouts (:data:`~composefs_py.mount.WHITEOUT_MARKERS`,
  which a dump of an image carries) go with the whiteouts.

mkcomposefs 1.0.8 applies them while it scans a directory and ignores them
with ``--from-file``; ``composefs-py build`` applies them to the Tree of any
source, after layers are flattened (a whiteout deletes before it is
skipped), before the image is written.  A directory scanned by mkcomposefs
with a flag and the dump of its image without the flag, built here with the
flag, give the same image bytes (tests/test_cli.py checks each flag so).

Cost: one pass over the Tree and one :class:`~composefs_py.model.TreeBuilder`
pass, linear as the Tree's own building was; an inode is copied only where
a flag changes it.  The builder checks the ``Limits`` given again: a Tree
only loses entries, xattrs and times here, so what passed them passes again.
With no flag set the Tree is returned as it is, at no cost.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .model import Hardlink, Inode, Tree, TreeBuilder
from .mount import WHITEOUT_MARKERS

if TYPE_CHECKING:
    from .limits import Limits

__all__ = ["BuildFlags", "apply_build_flags"]

_DEVICE_TYPES = frozenset((stat.S_IFCHR, stat.S_IFBLK))


@dataclass(frozen=True, slots=True)
class BuildFlags:
    """Which of mkcomposefs's build flags to apply (all off by default)."""

    use_epoch: bool = False
    skip_xattrs: bool = False
    user_xattrs: bool = False
    skip_devices: bool = False

    def __post_init__(self) -> None:
        if self.skip_xattrs and self.user_xattrs:
            raise ValueError("skip_xattrs and user_xattrs exclude each other")

    @property
    def any(self) -> bool:
        """Whether a flag is set (else the Tree is written as it is)."""
        return self.use_epoch or self.skip_xattrs or self.user_xattrs or self.skip_devices


def apply_build_flags(tree: Tree, flags: BuildFlags, *, limits: Limits | None = None) -> Tree:
    """``tree`` as libcomposefs's build ``flags`` make it (see the module docstring)."""
    if not flags.any:
        return tree
    builder = TreeBuilder(limits)
    for path, node in tree:
        inode = tree.inode(path)  # a hardlink goes where its inode goes
        if flags.skip_devices and inode.file_type in _DEVICE_TYPES:
            continue
        builder.add(path, node if isinstance(node, Hardlink) else _apply(node, flags))
    return builder.build()


def _apply(inode: Inode, flags: BuildFlags) -> Inode:
    xattrs = inode.xattrs
    if flags.skip_xattrs:
        xattrs = ()
    elif flags.user_xattrs:
        xattrs = tuple(x for x in xattrs if x[0].startswith(b"user."))
    if flags.skip_devices and inode.is_dir:
        xattrs = tuple(x for x in xattrs if x not in WHITEOUT_MARKERS)
    epoch = flags.use_epoch and (inode.mtime != 0 or inode.mtime_nsec != 0)
    if not epoch and xattrs == inode.xattrs:
        return inode
    if epoch:
        return replace(inode, mtime=0, mtime_nsec=0, xattrs=xattrs)
    return replace(inode, xattrs=xattrs)
