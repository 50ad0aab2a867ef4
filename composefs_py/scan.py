"""A directory becomes a :class:`~composefs_py.model.Tree`: ``mkcomposefs DIR IMAGE`` in-process.

:func:`scan_directory` reads a directory tree as mkcomposefs 1.0.8 does
(libcomposefs ``lcfs_build``/``lcfs_load_node_from_file``, mkcomposefs's
digest threads), so that ``write_image(scan_directory(D))`` is byte for byte
``mkcomposefs D IMAGE``, with one deliberate difference: hardlinks are kept.

What each inode gets, as mkcomposefs gives it:

* type and permission bits (``st_mode``), ``st_uid``, ``st_gid``, ``st_rdev``
  of devices; ``st_mtim`` seconds and nanoseconds (``use_epoch``: 0);
* xattrs: every name ``listxattr`` gives, all namespaces (``user.``,
  ``trusted.``, ``security.`` with ``security.selinux``, ACLs as their raw
  ``system.posix_acl_*`` values), read on the inode opened without following
  a link; ``user_xattrs``: only ``user.*``; ``skip_xattrs``: none (the two
  exclude each other).  An input's own ``trusted.overlay.*`` xattrs are
  refused as for every input (``Limits.allow_overlay_xattrs``), where
  mkcomposefs escapes them;
* a regular file of 1 to 64 bytes (``LCFS_RECOMMENDED_INLINE_CONTENT_MAX``)
  is kept inline in the image; an empty one has no payload and is never
  opened; a larger one gets its content's fs-verity digest (SHA-256, 4 KiB
  blocks) recorded, and is named by it: payload ``ab/cdef...`` from that
  digest's hex.  With ``objects`` whose ``naming`` is ``"sha256"`` the
  payload is the content's sha256 instead (the store's name for it);
  ``naming="fsverity"`` gives mkcomposefs's bytes;
* character and block devices (``skip_devices``: left out), FIFOs, symbolic
  links (their target verbatim) and sockets are kept as inodes of their
  type, as mkcomposefs keeps them (a socket is never opened);
* hardlinks: mkcomposefs reads each name as its own inode (the image loses
  every hardlink, upstream composefs issue #444).  Here the names of one
  inode (one ``(st_dev, st_ino)``) are one inode: the first name in the
  Tree's order holds it, the others are :class:`~composefs_py.model.Hardlink`
  nodes, its ``nlink`` counts the names inside the tree (links outside do not
  count).  Every other inode has ``nlink`` 1, as in mkcomposefs.

Files the kernel cannot open: mkcomposefs opens every non-empty regular file
(to digest it) and fails the build when it cannot; so does this scanner, and
the error names the path.  An empty regular file, a device, FIFO, socket or
symbolic link is never opened for reading (with xattrs: ``O_PATH``).

Confinement (DESIGN rule 8): the directory given is opened (its own path may
be a link: that is the caller's choice); below it every step is an
``openat(O_NOFOLLOW)`` relative to the fd of the directory above:
directories ``O_DIRECTORY``, everything else ``O_PATH`` (a regular file is
then reopened for reading through ``/proc/self/fd``: a device or FIFO
swapped in for it is never opened).  Each opened inode is checked to be of
the type the listing gave (``d_type``; where the listing does not say, an
``lstat``, which a later ``O_PATH`` open must match by ``st_dev``/``st_ino``
too), so a name swapped for a link or a file of another type during the
scan raises ValidationError naming the path, and no link is ever followed:
the scan cannot leave the tree.  A regular file whose size or mtime differ
before its read (``fstat`` of the ``O_PATH`` fd) and after it (``fstat`` of
the fd read), or whose read does not give that many bytes, raises
ValidationError naming the path: the digest would not match the content.

Threads: regular files are opened and checked by the walking thread, then
read and hashed by ``threads`` workers (None: the cores).  Without
``objects`` a worker's task (up to 32 files or 8 MiB) is one call of the
binding (``cfspy_digest_files``: advise the kernel to read every file of the
task, then for each ``pread`` through one 1 MiB buffer, libcomposefs'
fs-verity digest, ``fstat``, ``close``), which runs without the GIL: no
Python runs per file in a worker, so the walking thread and the workers do
not hand the GIL to each other per file (that handoff was a fifth of a
20k-file scan's CPU).  With ``objects``, or without the compiled
extension, a worker reads and hashes each file from Python (hashlib, or
libcomposefs through the binding, release the GIL on large buffers) and
each non-inline file is put in the store by
:meth:`~composefs_py.objects.ObjectStore.add_file` (reflink else copy, the
copy hashed and checked, then published), all in one
:meth:`~composefs_py.objects.ObjectStore.batch`: a failed scan adds nothing.

Cost (DESIGN rule 7): linear in the entries and the bytes of content.
Which :class:`~composefs_py.limits.Limits` field bounds what, and where:

* ``max_entries``: checked for each name as a directory is listed, before
  its entry is kept (the listed names not yet added and the files in
  flight count), and by the builder at each add;
* ``max_path_bytes``, ``max_name_bytes``, ``max_depth``,
  ``max_total_path_bytes``, ``max_xattr_*``: by the
  :class:`~composefs_py.model.TreeBuilder` as each entry is added: a
  directory before it is opened for listing, every other entry before it is
  read, except a regular file of more than 64 bytes, which is added with its
  final inode once read (at most ``_MAX_FILES_IN_FLIGHT`` such paths wait,
  so none of these can grow the memory first);
* ``max_file_size`` (and every other per-inode rule): a regular file's
  inode, with its size, is checked by the builder's rules
  (``_inode_problem``) before a byte of its content is read or copied.

Time: one ``openat`` and ``fstat`` per entry (plus the ``/proc/self/fd``
reopen and ``close`` of a regular file, an ``lstat`` for entries other than
files and directories), one ``listxattr`` (and a ``getxattr`` per name) per
inode, the sort of each directory's names, one pass over each file's content
(a file below 1 MiB in one ``pread``) and, with a store, its copy (or
reflink) and one more pass over the copy.  Memory: the Tree, the sorted
listings (names) of the directories on the current path (each entry at most
once), at most ``_MAX_FILES_IN_FLIGHT`` (256) files open and queued at once,
and one read buffer of 1 MiB per worker; xattr names and values are bounded
by the kernel (64 KiB each).  Open directory fds are at most
``_MAX_OPEN_DIRS`` whatever the depth: an ancestor's fd is closed and, when
the walk comes back up, reopened through ``..`` and checked to be the same
directory.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import mmap
import os
import stat
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from typing import TYPE_CHECKING

from ._buildflags import BuildFlags
from ._progress import ProgressArg, resolve_progress
from .errors import ValidationError
from .limits import Limits
from .model import ROOT, Hardlink, Inode, Tree, TreeBuilder, _inode_problem, new_inode
from .objects import fsverity_of_bytes, fsverity_of_fd, payload_for_hex, sha256_of_fd

if TYPE_CHECKING:
    from ._progress import Progress
    from .objects import ObjectStore

__all__ = ["INLINE_MAX", "scan_directory"]

#: ``LCFS_RECOMMENDED_INLINE_CONTENT_MAX``: mkcomposefs keeps a regular file
#: of 1..64 bytes inline in the image.
INLINE_MAX = 64

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_REOPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_OPEN_DIRS = 64
_MAX_FILES_IN_FLIGHT = 256
_BATCH_BYTES = 8 << 20
#: A regular file up to this size is read in one call and hashed from memory.
_WHOLE_READ = 1 << 20
_DEVICES = frozenset((stat.S_IFCHR, stat.S_IFBLK))
#: What the listing tells of an entry (its ``d_type``; no ``stat`` call):
#: a directory, a regular file, or anything else (looked at by ``lstat``).
_LISTED_DIR, _LISTED_FILE, _LISTED_OTHER = 0, 1, 2
#: The workers' read buffer (the native path: one per worker, see _Scanner._buffers).
_READ_BUFFER = 1 << 20


def scan_directory(
    path: str | os.PathLike[str] | bytes,
    *,
    objects: ObjectStore | None = None,
    limits: Limits | None = None,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    skip_devices: bool = False,
    use_epoch: bool = False,
    progress: ProgressArg = None,
    threads: int | None = None,
) -> Tree:
    """Read the directory tree at ``path`` into a Tree, as ``mkcomposefs path IMAGE``.

    ``objects``: also store each regular file's content there (as
    ``mkcomposefs --digest-store``).  ``skip_xattrs``, ``user_xattrs``,
    ``skip_devices``, ``use_epoch``: mkcomposefs's options of those names.
    ``progress``: see :mod:`composefs_py._progress`.  ``threads``: workers
    reading and hashing contents (None: the cores).  See the module
    docstring for what each inode gets; errors name the path (a
    ValidationError for the tree, an OSError with the host path).
    """
    # (BuildFlags refuses skip_xattrs with user_xattrs)
    flags = BuildFlags(
        use_epoch=use_epoch,
        skip_xattrs=skip_xattrs,
        user_xattrs=user_xattrs,
        skip_devices=skip_devices,
    )
    if threads is None:
        threads = os.cpu_count() or 1
    if threads.__class__ is not int or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    host_root = os.fsencode(path)
    limits = limits or Limits()
    reporter = resolve_progress(progress, "scanning")
    root_fd = os.open(host_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    scanner = _Scanner(
        host_root,
        flags,
        objects,
        TreeBuilder(limits, duplicates="replace", count_hardlinks=True),
        reporter,
        threads,
        limits,
    )
    batch = objects.batch() if objects is not None else contextlib.nullcontext()
    try:
        with batch:  # published only if the scan and the Tree's checks pass
            scanner.run(root_fd)
            tree = scanner.builder.build(cache_nodes=False)
    finally:
        os.close(root_fd)
    if reporter is not None:
        reporter.close()
    return tree


class _Frame:
    """A directory being walked: its fd (None while closed to save fds), its
    identity, and its entries (name, what the listing says it is), sorted by name."""

    __slots__ = ("entries", "fd", "ident", "index", "path")

    def __init__(
        self,
        path: bytes,
        fd: int,
        ident: tuple[int, int],
        entries: list[tuple[bytes, int]],
    ) -> None:
        self.path = path
        self.fd: int | None = fd
        self.ident = ident
        self.entries = entries
        self.index = 0


class _Scanner:
    __slots__ = (
        "_host_root",
        "_batch",
        "_batch_bytes",
        "_batch_files",
        "_buffers",
        "_in_flight",
        "_limits_entries",
        "_links",
        "_limits",
        "_listed",
        "_max_in_flight",
        "_pending",
        "_objects",
        "_options",
        "_pool",
        "_progress",
        "_threads",
        "builder",
    )

    def __init__(
        self,
        host_root: bytes,
        options: BuildFlags,
        objects: ObjectStore | None,
        builder: TreeBuilder,
        progress: Progress | None,
        threads: int,
        limits: Limits,
    ) -> None:
        self._host_root = host_root
        self._options = options
        self._objects = objects
        self.builder = builder
        self._progress = progress
        self._threads = threads
        # Files open at once: at most _MAX_FILES_IN_FLIGHT, in tasks of up to
        # 32 files (fewer with many threads, so that each has tasks).
        self._batch_files = max(1, min(32, _MAX_FILES_IN_FLIGHT // (threads + 3)))
        self._max_in_flight = threads + 2
        self._in_flight: deque[tuple[Future[list[Inode] | _Digests], list[_File]]] = deque()
        self._batch: list[_File] = []
        self._batch_bytes = 0
        self._links: dict[tuple[int, int], bytes] = {}
        self._listed = 0
        self._pending = 0
        self._limits = limits
        self._limits_entries = limits.max_entries
        self._pool: ThreadPoolExecutor | None = None
        # The native path's read buffers, one per worker, mapped here: a buffer
        # a worker allocated stays in its thread's malloc arena once freed,
        # memory the image writer cannot reuse.  Pages are touched as files
        # need them, and unmapped at the end.
        self._buffers: SimpleQueue[mmap.mmap] | None = None

    # -- the walk --------------------------------------------------------

    def run(self, root_fd: int) -> None:
        pool = ThreadPoolExecutor(self._threads, thread_name_prefix="composefs-scan")
        self._pool = pool
        stack: list[_Frame] = []
        try:
            st = os.fstat(root_fd)
            self.builder.add(ROOT, self._inode(st, self._xattrs(root_fd)))
            self._advance(0)
            stack.append(self._open_frame(ROOT, os.dup(root_fd), st))
            self._walk(stack)
            self._flush()
            while self._in_flight:
                self._collect_oldest()
        except BaseException:
            for frame in stack:
                if frame.fd is not None:
                    os.close(frame.fd)
            self._cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self._unmap()
            raise
        pool.shutdown(wait=True)
        self._unmap()

    def _unmap(self) -> None:
        """Unmap the read buffers (the workers are done)."""
        buffers, self._buffers = self._buffers, None
        while buffers is not None and not buffers.empty():
            buffers.get().close()

    def _walk(self, stack: list[_Frame]) -> None:
        while stack:
            frame = stack[-1]
            if frame.index == len(frame.entries):
                stack.pop()
                assert frame.fd is not None
                try:
                    if stack and stack[-1].fd is None:
                        self._reopen_parent(stack[-1], frame)
                finally:
                    os.close(frame.fd)
                continue
            name, listed = frame.entries[frame.index]
            frame.index += 1
            self._listed -= 1
            path = frame.path + b"/" + name if frame.path != ROOT else b"/" + name
            child = self._entry(frame, name, path, listed)
            if child is not None:
                stack.append(child)
                if len(stack) > _MAX_OPEN_DIRS:
                    far = stack[-_MAX_OPEN_DIRS - 1]
                    if far.fd is not None:
                        os.close(far.fd)
                        far.fd = None

    def _reopen_parent(self, parent: _Frame, child: _Frame) -> None:
        """Reopen ``parent``'s fd through the child's ``..``; it must be the same directory."""
        assert child.fd is not None
        try:
            fd = os.open(b"..", _DIR_FLAGS, dir_fd=child.fd)
        except OSError as exc:
            raise self._os_error(exc, parent.path) from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != parent.ident:
            os.close(fd)
            raise _changed(parent.path, "the directory was moved")
        parent.fd = fd

    def _open_frame(self, path: bytes, fd: int, st: os.stat_result) -> _Frame:
        """List the directory open at ``fd`` (which the frame then owns): names
        and what ``d_type`` says each is (no ``stat`` call where it says)."""
        entries: list[tuple[bytes, int]] = []
        room = self._limits_entries - len(self.builder) - self._listed - self._pending
        fsencode = os.fsencode
        try:
            with os.scandir(fd) as listing:
                for entry in listing:
                    if len(entries) >= room:
                        raise ValidationError(
                            f"more than {self._limits_entries} entries", path=path
                        )
                    try:
                        if entry.is_file(follow_symlinks=False):
                            kind = _LISTED_FILE
                        elif entry.is_dir(follow_symlinks=False):
                            kind = _LISTED_DIR
                        else:
                            kind = _LISTED_OTHER
                    except FileNotFoundError:
                        continue  # (no d_type, and) gone since the listing
                    entries.append((fsencode(entry.name), kind))
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc, path) from None
        except BaseException:
            os.close(fd)
            raise
        entries.sort()  # by name: names are unique
        self._listed += len(entries)
        return _Frame(path, fd, (st.st_dev, st.st_ino), entries)

    def _entry(self, frame: _Frame, name: bytes, path: bytes, listed: int) -> _Frame | None:
        """Add one listed entry; return the frame of a directory to walk next."""
        dir_fd = frame.fd
        assert dir_fd is not None
        builder = self.builder
        if listed == _LISTED_DIR:
            fd, opened = self._open(name, _DIR_FLAGS, dir_fd, path, stat.S_IFDIR)
            try:
                builder.add(path, self._inode(opened, self._xattrs(fd, path)))
            except BaseException:
                os.close(fd)
                raise
            self._advance(0)
            return self._open_frame(path, fd, opened)
        if listed == _LISTED_FILE:
            self._regular(name, dir_fd, path)
            return None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _changed(path, "it was replaced or removed") from None
        except OSError as exc:
            raise self._os_error(exc, path) from None
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR or kind == stat.S_IFREG:
            raise _changed(path, "it was replaced by another file")
        if kind in _DEVICES and self._options.skip_devices:
            return None
        if st.st_nlink > 1 and self._linked(st, path):
            return None
        target = None
        if kind == stat.S_IFLNK:
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # no longer a link
                    raise _changed(path, "it is no longer a symbolic link") from None
                raise self._os_error(exc, path) from None
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        if not self._options.skip_xattrs:
            fd, opened = self._open(name, _PATH_FLAGS, dir_fd, path, kind)
            try:
                if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                    raise _changed(path, "it was replaced by another file")
                xattrs = self._xattrs(f"/proc/self/fd/{fd}", path)
            finally:
                os.close(fd)
        builder.add(path, self._inode(st, xattrs, symlink_target=target))
        self._advance(0)
        return None

    def _linked(self, st: os.stat_result, path: bytes) -> bool:
        """Whether ``st``'s inode was met before: then ``path`` is added as a
        hardlink to its first name."""
        key = (st.st_dev, st.st_ino)
        first = self._links.get(key)
        if first is None:
            self._links[key] = path
            return False
        self.builder.add(path, Hardlink(first))
        self._advance(0)
        return True

    def _regular(self, name: bytes, dir_fd: int, path: bytes) -> None:
        """Add the regular file listed as ``name``: its inode (a placeholder until
        its content is read) goes to the builder before a byte is read."""
        handle, st = self._open(name, _PATH_FLAGS, dir_fd, path, stat.S_IFREG)
        fd = -1
        try:
            if st.st_nlink > 1 and self._linked(st, path):
                return
            size = st.st_size
            if size == 0:  # no content, never opened for reading
                xattrs = self._xattrs(f"/proc/self/fd/{handle}", path)
                self.builder.add(path, self._inode(st, xattrs))
                self._advance(0)
                return
            fd = self._reopen(handle, name, dir_fd, path, st)
            placeholder = self._inode(st, self._xattrs(fd, path))
            if size <= INLINE_MAX:  # read here: cheaper than queueing
                owned, fd = fd, -1
                self.builder.add(path, _read_file(owned, st, placeholder, path, None))
                self._advance(size)
                return
            # Its path goes to the builder with its final inode, once read (a
            # file in flight costs no more than its listing did); what bounds
            # the read is checked now, by the builder's own rules.
            problem = _inode_problem(placeholder, self._limits)
            if problem is not None:
                raise ValidationError(problem[1], path=path, field=problem[0])
            owned, fd = fd, -1
            self._submit(owned, st, placeholder, path)  # the queue owns it
        finally:
            if handle >= 0:
                os.close(handle)
            if fd >= 0:
                os.close(fd)

    def _open(
        self, name: bytes, flags: int, dir_fd: int, path: bytes, kind: int
    ) -> tuple[int, os.stat_result]:
        """``openat(dir_fd, name, flags)`` (never following a link), checked to be
        of type ``kind``; the fd and its ``fstat``."""
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.ENXIO):
                raise _changed(path, "it was replaced or removed") from None
            raise self._os_error(exc, path) from None
        try:
            opened = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if stat.S_IFMT(opened.st_mode) != kind:
            os.close(fd)
            raise _changed(path, "it was replaced by another file")
        return fd, opened

    def _reopen(
        self, handle: int, name: bytes, dir_fd: int, path: bytes, st: os.stat_result
    ) -> int:
        """Open the regular file whose ``O_PATH`` fd is ``handle`` for reading,
        never anything else: through ``/proc/self/fd``, the very inode checked
        (opening a name where a device or FIFO was swapped in would already act
        on it).  Without /proc: the name again, checked to be the same inode."""
        try:
            return os.open(f"/proc/self/fd/{handle}", _REOPEN_FLAGS)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._os_error(exc, path) from None
        fd, opened = self._open(name, _FILE_FLAGS, dir_fd, path, stat.S_IFREG)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise _changed(path, "it was replaced by another file")
        return fd

    def _xattrs(self, target: int | str, path: bytes = ROOT) -> tuple[tuple[bytes, bytes], ...]:
        options = self._options
        if options.skip_xattrs:
            return ()
        try:
            names = os.listxattr(target)
            if not names:
                return ()
            pairs = []
            for name in names:
                if options.user_xattrs and not name.startswith("user."):
                    continue
                pairs.append((os.fsencode(name), os.getxattr(target, name)))
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return ()
            raise self._os_error(exc, path) from None
        pairs.sort()
        return tuple(pairs)

    def _inode(
        self,
        st: os.stat_result,
        xattrs: tuple[tuple[bytes, bytes], ...],
        *,
        symlink_target: bytes | None = None,
    ) -> Inode:
        mode = st.st_mode
        kind = stat.S_IFMT(mode)
        if self._options.use_epoch:
            sec = nsec = 0
        else:
            sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
        return new_inode(
            mode,
            2 if kind == stat.S_IFDIR else 1,
            st.st_uid,
            st.st_gid,
            sec,
            nsec,
            st.st_size if kind == stat.S_IFREG else 0,
            st.st_rdev if kind in _DEVICES else 0,
            None,
            symlink_target,
            None,
            None,
            xattrs,
        )

    # -- contents ----------------------------------------------------------

    def _submit(self, fd: int, st: os.stat_result, placeholder: Inode, path: bytes) -> None:
        """Queue the file open at ``fd`` (the queue owns the fd from here on)."""
        self._batch.append((fd, st, placeholder, path))
        self._pending += 1
        self._batch_bytes += st.st_size
        if len(self._batch) >= self._batch_files or self._batch_bytes >= _BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Hand the queued files to a worker, as one task (a task per file costs
        the walking thread more than hashing a small file does)."""
        batch = self._batch
        if not batch:
            return
        in_flight = self._in_flight
        while in_flight and (len(in_flight) >= self._max_in_flight or in_flight[0][0].done()):
            self._collect_oldest()
        assert self._pool is not None
        self._batch = []
        self._batch_bytes = 0
        digest_files = _native_digest_files() if self._objects is None else None
        future: Future[list[Inode] | _Digests]
        try:
            if digest_files is not None:
                if self._buffers is None:
                    self._buffers = SimpleQueue()
                    for _ in range(self._threads):
                        self._buffers.put(mmap.mmap(-1, _READ_BUFFER))
                future = self._pool.submit(_digest_files, digest_files, batch, self._buffers)
            else:
                future = self._pool.submit(_read_files, batch, self._objects)
        except BaseException:
            _close_all(batch)
            raise
        in_flight.append((future, batch))

    def _collect_oldest(self) -> None:
        future, batch = self._in_flight.popleft()
        try:
            done = future.result()
        except _ReadFailed as failed:
            raise self._os_error(failed.error, failed.path) from None
        inodes = done if isinstance(done, list) else self._digested(batch, done)
        self._pending -= len(batch)
        add = self.builder.add
        for (_fd, st, _placeholder, path), inode in zip(batch, inodes, strict=True):
            add(path, inode)
            self._advance(st.st_size)

    def _digested(self, batch: list[_File], digests: _Digests) -> list[Inode]:
        """The final inodes of a batch :func:`_digest_files` read, each checked
        to be read whole and unchanged (else the error names its path)."""
        joined, stats, errors = digests
        inodes = []
        for at, (_fd, st, p, path) in enumerate(batch):
            code = errors[at]
            if code:
                raise self._os_error(OSError(code, os.strerror(code)), path)
            read, size, mtime = stats[3 * at : 3 * at + 3]
            if read != st.st_size:
                raise _changed(path, f"{st.st_size} bytes listed, {read} read")
            _check_unchanged(path, st, size, mtime)
            digest = joined[32 * at : 32 * at + 32]
            payload = payload_for_hex(digest.hex())
            inodes.append(
                new_inode(
                    p.mode, p.nlink, p.uid, p.gid, p.mtime, p.mtime_nsec, p.size, p.rdev,
                    payload, None, None, digest, p.xattrs,
                )
            )  # fmt: skip
        return inodes

    def _cancel(self) -> None:
        """Cancel the reads not started and close their fds (a started task closes
        its own), and those of the files still queued."""
        while self._in_flight:
            future, batch = self._in_flight.popleft()
            if future.cancel():
                _close_all(batch)
        batch, self._batch = self._batch, []
        _close_all(batch)

    def _advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(files=1, nbytes=nbytes)

    def _os_error(self, exc: OSError, path: bytes) -> OSError:
        """``exc`` naming the host path of tree path ``path``."""
        if isinstance(exc, ValidationError):
            return exc
        host = self._host_root.rstrip(b"/") + (path if path != ROOT else b"")
        return type(exc)(
            exc.errno, exc.strerror or os.strerror(exc.errno or 0), os.fsdecode(host or b"/")
        )


def _changed(path: bytes, what: str) -> ValidationError:
    return ValidationError(f"changed during the scan: {what}", path=path)


#: A regular file queued for reading: its fd, lstat, placeholder inode, tree path.
_File = tuple[int, os.stat_result, Inode, bytes]


class _ReadFailed(Exception):
    """An OSError of a worker, with the tree path of the file it read."""

    def __init__(self, path: bytes, error: OSError) -> None:
        super().__init__(path, error)
        self.path = path
        self.error = error


def _close_all(batch: list[_File]) -> None:
    for fd, _st, _placeholder, _path in batch:
        os.close(fd)


#: What :func:`_native.digest_files` gives for a batch: the digests joined,
#: (bytes read, size, mtime ns) per file, and each file's errno.
_Digests = tuple[bytes, "array[int]", "array[int]"]
_DigestFiles = Callable[[Sequence[int], Sequence[int], mmap.mmap, int], _Digests]


@functools.cache
def _native_digest_files() -> _DigestFiles | None:
    """The binding's ``digest_files`` (a batch of files read and hashed in one
    C call, the GIL released), or None without the compiled extension."""
    try:
        from . import _native

        return _native.digest_files
    except Exception:  # no usable extension: each file read and hashed from Python
        return None


def _digest_files(
    digest_files: _DigestFiles, batch: list[_File], buffers: SimpleQueue[mmap.mmap]
) -> list[Inode] | _Digests:
    """A worker's task without a store: every file of ``batch`` read and hashed
    by one native call, which closes every fd, through a buffer of ``buffers``
    (one for each worker: one is free whenever a task runs)."""
    fds = [file[0] for file in batch]
    sizes = [file[1].st_size for file in batch]
    buffer = buffers.get()
    try:
        return digest_files(fds, sizes, buffer, _BATCH_BYTES)
    finally:
        buffers.put(buffer)


def _check_unchanged(path: bytes, st: os.stat_result, size: int, mtime_ns: int) -> None:
    """Raise if the size or mtime after the read (``size``, ``mtime_ns``) are
    not ``st``'s, taken before it."""
    if size != st.st_size or mtime_ns != st.st_mtime_ns:
        raise _changed(
            path,
            f"size {st.st_size} -> {size}, mtime {st.st_mtime_ns} -> {mtime_ns} ns "
            "while it was read",
        )


def _read_files(batch: list[_File], objects: ObjectStore | None) -> list[Inode] | _Digests:
    """:func:`_read_file` for each file of ``batch`` (a worker's task); every fd
    is closed, whatever happens."""
    inodes = []
    for index, (fd, st, placeholder, path) in enumerate(batch):
        try:
            inodes.append(_read_file(fd, st, placeholder, path, objects))
        except OSError as exc:
            _close_all(batch[index + 1 :])
            raise _ReadFailed(path, exc) from None
        except BaseException:
            _close_all(batch[index + 1 :])
            raise
    return inodes


def _read_file(
    fd: int, st: os.stat_result, placeholder: Inode, path: bytes, objects: ObjectStore | None
) -> Inode:
    """Read and hash the regular file open at ``fd`` (closed here); its final inode.

    Runs in a worker thread.  Raises ValidationError naming ``path`` if the
    file's size or mtime after the read differ from ``st``'s."""
    try:
        size = st.st_size
        content = payload = digest = None
        if size <= INLINE_MAX:
            content = os.pread(fd, size + 1, 0)
            if len(content) != size:
                raise _changed(path, f"{size} bytes listed, {len(content)} read")
        else:
            sha256 = None
            want_sha256 = objects is not None and objects.naming == "sha256"
            if size <= _WHOLE_READ:  # one read, hashed in one call
                data = os.pread(fd, size + 1, 0)
                if len(data) != size:
                    raise _changed(path, f"{size} bytes listed, {len(data)} read")
                digest = fsverity_of_bytes(data)
                if want_sha256:
                    sha256 = hashlib.sha256(data).hexdigest()
                del data
            else:
                digest = fsverity_of_fd(fd)
                if want_sha256:
                    sha256 = sha256_of_fd(fd)
            if objects is None:
                payload = payload_for_hex(digest.hex())
            else:
                try:
                    payload = objects.add_file(fd, sha256=sha256, fsverity=digest)
                except ValidationError as exc:
                    raise _changed(path, exc.reason) from None
        after = os.fstat(fd)
        _check_unchanged(path, st, after.st_size, after.st_mtime_ns)
    finally:
        os.close(fd)
    p = placeholder
    return new_inode(
        p.mode, p.nlink, p.uid, p.gid, p.mtime, p.mtime_nsec, p.size, p.rdev, payload,
        None, content, digest, p.xattrs,
    )  # fmt: skip
