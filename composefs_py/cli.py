"""The ``composefs-py`` command (also ``python -m composefs_py``).

Exit status: 0 success, 1 rejected input or failed operation (one line
``composefs-py: error: ...`` on stderr, no traceback), 2 usage error.

Each subcommand is one ``_cmd_*`` function plus one entry in ``_COMMANDS``
naming the module it needs; a command whose module is not part of this
build is simply not offered.  A run builds the options of its own command
only, and the modules a command needs are imported when it runs, so that
``import composefs_py.cli`` and ``--help`` load nothing else.

``build`` speaks mkcomposefs 1.0.8's command line where the meaning is the
same: ``SOURCE IMAGE`` (or ``-o IMAGE``; ``-`` is stdout), ``--digest-store``,
``--print-digest[-only]``, ``--from-file``, ``--min-version``/``--max-version``
(read as mkcomposefs reads them), and the build flags ``--use-epoch``,
``--skip-xattrs``, ``--user-xattrs``, ``--skip-devices``, which apply to any
source here (:mod:`composefs_py._buildflags`); ``--lenient`` reads a dumpfile
as mkcomposefs does without ``CFS_PARSE_STRICT``.

Cost of what the command itself reads (the validators bound the rest, see
their modules): a text source is read once, at most ``max_input_bytes`` + 1
bytes (checked before it is decoded), a gzip one decompressed in steps whose
output is capped at the same limit before it is allocated; sniffing reads
4 KiB (64 KiB of a gzip stream, decompressed to at most 4 KiB); the check of
a positional IMAGE reads 1 KiB of a regular file and opens nothing else (a
FIFO is never opened to be checked).  A build flag rebuilds the Tree once,
linearly, after the sources' Trees are let go.

``ls``, ``objects`` and ``missing-objects`` (composefs-info's commands, the
same output) refuse an IMAGE that is no regular file before opening it,
read each with :func:`~composefs_py.writer.read_image` (``Limits`` bound
it), and cost one pass over each Tree: ``ls`` escapes each path and target
once through a 256-entry table (a name needing no escape is not copied),
``--filter`` rebuilds the Tree once; the objects are a set, sorted once,
each looked up at most once per store (:func:`~composefs_py.objects.absent_payloads`).
``store check`` is :meth:`~composefs_py.objects.ObjectStore.check` (its
cost is there).  ``mount`` prints each warning the mount gives (missing
objects with ``--allow-missing``) as one ``warning:`` line.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import ComposefsError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._userns import IdRange
    from .model import Tree

__all__ = ["build_parser", "main"]

PROG = "composefs-py"
SOURCE_KINDS = ("dumpfile", "toc", "layer")
_SNIFF_BYTES = 4096
_GZIP_MAGIC = b"\x1f\x8b"


class CommandError(Exception):
    """A failure to report as one line on stderr with exit status 1."""


def _input_limit() -> int:
    from .limits import Limits

    return Limits().max_input_bytes


# ---------------------------------------------------------------------------
# reading sources
# ---------------------------------------------------------------------------


def _read_limited(path: str) -> bytes:
    """Read ``path`` (``-`` is stdin), refusing more than the input limit."""
    limit = _input_limit()
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as stream:
            data = stream.read(limit + 1)
    if len(data) > limit:
        raise CommandError(f"{path}: larger than the input limit of {limit} bytes")
    return data


def _gunzip_limited(data: bytes, path: str) -> bytes:
    import zlib

    limit = _input_limit()
    out = bytearray()
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    chunk = data
    try:
        while chunk:
            out += decompressor.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit:
                raise CommandError(
                    f"{path}: decompresses to more than the input limit of {limit} bytes"
                )
            chunk = decompressor.unconsumed_tail
            if not chunk and decompressor.eof and decompressor.unused_data:
                # concatenated gzip members
                chunk = decompressor.unused_data
                decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise CommandError(f"{path}: not valid gzip data: {exc}") from None
    return bytes(out)


def _looks_like_text(head: bytes) -> bool:
    return b"\0" not in head


def _gzip_holds_dumpfile(data: bytes) -> bool:
    """Whether gzip ``data`` starts with a dumpfile line (else it is a layer)."""
    import zlib

    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        head = decompressor.decompress(data[: 1 << 16], _SNIFF_BYTES)
    except zlib.error:
        return False
    return head.lstrip()[:1] == b"/"


def sniff_source(path: str, data: bytes | None) -> str:
    """Return ``"toc"``, ``"dumpfile"`` or ``"layer"`` for the source at ``path``.

    ``data`` is the whole source when already read (text sources), else None.
    A text document whose first non-space byte is ``{`` is a TOC, other
    text a dumpfile (gzip-compressed dumpfiles too); anything else a layer.
    """
    if data is None:
        with open(path, "rb") as stream:
            head = stream.read(_SNIFF_BYTES)
    else:
        head = data[:_SNIFF_BYTES]
    if head.startswith(_GZIP_MAGIC):
        if data is None:
            with open(path, "rb") as stream:
                data = stream.read(1 << 16)
        return "dumpfile" if _gzip_holds_dumpfile(data) else "layer"
    if not _looks_like_text(head):
        return "layer"
    first = head.lstrip()[:1]
    if first == b"{":
        return "toc"
    if first == b"/":
        return "dumpfile"
    return "layer" if head else "dumpfile"


def _module(name: str, what: str) -> Any:
    from importlib import import_module

    try:
        return import_module(f"composefs_py.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"composefs_py.{name}":
            raise CommandError(f"{what} is not supported by this build") from None
        raise


# A NamedTuple, not a dataclass: importing dataclasses (and inspect with it)
# costs more than the rest of this module, and ``--help`` needs neither.


class Source(NamedTuple):
    """A validated input: its Tree, its kind, and the layer when it is one."""

    tree: Tree
    kind: str
    layer: Any = None


def _text_of(path: str, kind: str | None) -> tuple[str, bytes | None]:
    """Read a text source; return its kind and bytes (None for a layer)."""
    if kind == "layer":
        return kind, None
    if path == "-":
        data = _read_limited(path)
    else:
        if kind is None and sniff_source(path, None) == "layer":
            return "layer", None
        data = _read_limited(path)
    if data.startswith(_GZIP_MAGIC):
        data = _gunzip_limited(data, path)
    if kind is None:
        kind = sniff_source(path, data)
    if kind == "layer":
        if path == "-":
            raise CommandError("a layer cannot be read from standard input; name its file")
        return kind, None
    return kind, data


def load_source(
    path: str,
    kind: str | None = None,
    *,
    compat: str | None = None,
    lenient: bool = False,
    collect: bool = False,
    progress: bool | None = None,
    store: Callable[[], Any] | None = None,
) -> Source:
    """Parse the source at ``path`` (``-``: stdin) into a validated Tree.

    With ``store`` (which gives the ObjectStore, opened on first use), a
    layer's file contents are imported into that object store, verified,
    and the Tree names them; a dumpfile or TOC has none, and as mkcomposefs
    ignores ``--digest-store`` with ``--from-file``, a warning says that
    nothing is stored.  ``lenient``: a dumpfile is parsed with ``strict=False``.
    """
    kind, data = _text_of(path, kind)
    if store is not None and kind != "layer":
        print(
            f"{PROG}: warning: --digest-store: {path} is a {kind}, which carries no "
            "file contents: nothing is stored",
            file=sys.stderr,
        )
    if lenient and kind != "dumpfile":
        raise CommandError(f"--lenient applies to dumpfile sources, not to a {kind}")
    if kind == "toc":
        assert data is not None
        toc = _module("toc", "reading a TOC")
        tree = toc.parse_toc(data, compat=compat, collect=collect, progress=progress)
        return Source(tree, kind)
    if kind == "dumpfile":
        assert data is not None
        if compat is not None:
            raise CommandError("--compat applies to TOC and layer sources")
        dumpfile = _module("dumpfile", "reading a dumpfile")
        return Source(dumpfile.parse_dumpfile(data, strict=not lenient), kind)
    layer = _module("layers", "reading a layer").open_layer(path)
    if collect:
        toc_bytes = layer.toc_bytes()
        if toc_bytes is not None:  # report every problem of the TOC at once
            _module("toc", "reading a TOC").parse_toc(toc_bytes, compat=compat, collect=True)
    if store is None:
        return Source(layer.tree(compat=compat), kind, layer)
    tree = layer.import_objects(store(), compat=compat, progress=progress)
    return Source(tree, kind, layer)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading SOURCE")
    kind = group.add_mutually_exclusive_group()
    kind.add_argument(
        "--from",
        dest="source_kind",
        choices=SOURCE_KINDS,
        help="what SOURCE is (default: sniffed from its content)",
    )
    kind.add_argument(
        "--from-file",
        dest="source_kind",
        action="store_const",
        const="dumpfile",
        help="SOURCE is a dumpfile (mkcomposefs's spelling of --from dumpfile)",
    )
    group.add_argument(
        "--lenient",
        action="store_true",
        help="read a dumpfile as leniently as mkcomposefs does without "
        "CFS_PARSE_STRICT (the sloppiness of upstream's three non-strict "
        "test dumpfiles, nothing more); default: strict",
    )
    group.add_argument(
        "--compat",
        choices=("containers-storage",),
        help="reproduce containers/storage's TOC conversion exactly",
    )


def _add_build(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] SOURCE [SOURCE ...] {IMAGE | -o IMAGE | --print-digest-only}"
    parser.description = (
        "Build a composefs image from SOURCE (a composefs-dump(5) file, a TOC "
        "JSON or a layer; '-' reads a dumpfile or TOC from stdin) and print its "
        "fs-verity digest.  As with mkcomposefs, the last word is the IMAGE "
        "unless -o names it or --print-digest-only writes none.  Several SOURCEs "
        "are layers of one image, base first: they are flattened with OCI "
        "semantics (whiteouts delete, opaque directories hide what lies below, "
        "later layers replace earlier entries).  One layer alone keeps its "
        "whiteouts, so that its image can be mounted stacked."
    )
    parser.add_argument(
        "paths",
        metavar="SOURCE ... [IMAGE]",
        nargs="+",
        help="the source(s), then the image (a new name or a composefs image: "
        "any other existing file is replaced only when -o names it)",
    )
    _add_source_options(parser)
    output = parser.add_argument_group("the image")
    output.add_argument(
        "-o",
        "--output",
        metavar="IMAGE",
        help="where to write the image: a regular file or a new name is replaced "
        "atomically; a symlink, device or FIFO is written through; '-' is "
        "standard output (the digest then goes to stderr)",
    )
    output.add_argument(
        "--print-digest",
        action="store_true",
        help="print the image's fs-verity digest (the default; mkcomposefs's option)",
    )
    output.add_argument(
        "--print-digest-only",
        action="store_true",
        help="print the image's fs-verity digest and write no image",
    )
    output.add_argument(
        "--min-version",
        type=int,
        metavar="N",
        help="the lowest composefs format version to write (default 0); "
        "libcomposefs moves up to --max-version only where the tree needs it "
        "(a whiteout needs 1)",
    )
    output.add_argument(
        "--max-version",
        type=int,
        metavar="N",
        help="the highest format version allowed (default 1).  As in "
        "mkcomposefs, giving one of the two makes the other default to 0, and a "
        "--max-version below --min-version is raised to it",
    )
    output.add_argument(
        "--backend",
        choices=("auto", "native", "sandbox", "mkcomposefs"),
        default="auto",
        help="writer backend (default: auto)",
    )
    content = parser.add_argument_group(
        "what the image keeps",
        "mkcomposefs's build flags, applied to any SOURCE (mkcomposefs applies "
        "them to a directory only), after the layers are flattened",
    )
    content.add_argument("--use-epoch", action="store_true", help="make every mtime zero")
    xattrs = content.add_mutually_exclusive_group()
    xattrs.add_argument("--skip-xattrs", action="store_true", help="keep no xattrs")
    xattrs.add_argument("--user-xattrs", action="store_true", help="keep only user.* xattrs")
    content.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads hashing a directory SOURCE's files (default: the cores)",
    )
    content.add_argument(
        "--skip-devices",
        action="store_true",
        help="keep no character or block devices (whiteouts are character devices)",
    )
    store = parser.add_argument_group("file contents (layer SOURCEs)")
    store.add_argument(
        "--digest-store",
        "--objects",
        dest="objects",
        metavar="DIR",
        help="import the layers' file contents into this object store",
    )
    verity = store.add_mutually_exclusive_group()
    verity.add_argument(
        "--verity-digests",
        action="store_true",
        help="record each file's fs-verity digest in the image",
    )
    verity.add_argument(
        "--enable-verity",
        action="store_true",
        help="also enable kernel fs-verity on every object (the store's file "
        "system and the kernel must support it)",
    )
    store.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr: validating, importing, writing (default: on a terminal)",
    )
    parser.set_defaults(run=_cmd_build, positional_list="paths")


def _versions(args: argparse.Namespace) -> tuple[int, int]:
    """``--min-version``/``--max-version`` as mkcomposefs 1.0.8 reads them:
    (0, 1) when neither is given, else the one not given is 0; libcomposefs
    then raises a maximum below the minimum to it."""
    from ._backend import VERSION_MAX

    if args.min_version is None and args.max_version is None:
        return 0, 1
    low = args.min_version or 0
    high = max(args.max_version or 0, low)
    if not 0 <= low <= VERSION_MAX or not 0 <= high <= VERSION_MAX:
        raise UsageError(
            f"format versions go from 0 to {VERSION_MAX}, "
            f"got --min-version {args.min_version} and --max-version {args.max_version}"
        )
    return low, high


def _sources_and_image(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """Split the positional words into SOURCEs and the IMAGE (None: no image)."""
    paths: list[str] = args.paths
    if args.print_digest_only:
        if args.output is not None:
            raise UsageError("--print-digest-only writes no image: drop -o")
        return paths, None
    if args.output is not None:
        return paths, args.output
    if len(paths) < 2:
        raise UsageError("no IMAGE: give SOURCE IMAGE, -o IMAGE or --print-digest-only")
    image = paths[-1]
    _check_positional_image(image)
    return paths[:-1], image


def _check_positional_image(path: str) -> None:
    """Refuse to replace an existing file that is no composefs image when it is
    named as the last word: with several SOURCEs, a forgotten ``-o`` would
    otherwise replace the top layer with an image."""
    from .writer import EROFS_SUPER_OFFSET, is_image

    if path == "-":
        return
    try:  # never opened unless a regular file: a FIFO would block
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return
        with open(path, "rb") as stream:
            head = stream.read(EROFS_SUPER_OFFSET + 4)
    except OSError:  # a new name, or one the writer will report on
        return
    if not is_image(head):
        raise UsageError(
            f"{path} exists and is not a composefs image; name it with -o to replace it"
        )


def _scanned(args: argparse.Namespace, directory: str) -> Any:
    """The Tree of a directory SOURCE, as ``mkcomposefs DIR IMAGE`` reads it (but
    every hardlink kept); with a store, its files' contents go into it, named by
    their fs-verity digests as ``mkcomposefs --digest-store`` names them."""
    if args.compat is not None or args.lenient:
        raise UsageError("--compat and --lenient apply to TOC, layer and dumpfile sources")
    store = None
    if args.objects is not None:
        store = _module("objects", "an object store").ObjectStore(
            args.objects, naming="fsverity", enable_verity=args.enable_verity
        )
    # The scan makes no cyclic garbage: the collector's passes over its many
    # young objects are wasted (about 4% of a 20k-file build's CPU), and this
    # process runs nothing else meanwhile; _cmd_build collects once after it.
    import gc

    gc.disable()
    try:
        return _module("scan", "reading a directory").scan_directory(
            directory,
            objects=store,
            skip_xattrs=args.skip_xattrs,
            user_xattrs=args.user_xattrs,
            skip_devices=args.skip_devices,
            use_epoch=args.use_epoch,
            progress=True if args.progress else None,
            threads=args.threads,
        )
    finally:
        gc.enable()
        if store is not None:
            store.close()


def _built_from_sources(
    args: argparse.Namespace, sources: list[str], store: Callable[[], Any] | None
) -> Any:
    """The Tree of TOC, dumpfile and layer SOURCEs (several are flattened), with
    the build flags applied."""
    trees = [
        load_source(
            path,
            args.source_kind,
            compat=args.compat,
            lenient=args.lenient,
            store=store,
            progress=True if args.progress else None,
        ).tree
        for path in sources
    ]
    tree = trees[0] if len(trees) == 1 else _module("mount", "flattening layers").flatten(trees)
    del trees  # a build flag makes a new Tree: the sources' go first
    if args.use_epoch or args.skip_xattrs or args.user_xattrs or args.skip_devices:
        from ._buildflags import BuildFlags, apply_build_flags

        flags = BuildFlags(
            use_epoch=args.use_epoch,
            skip_xattrs=args.skip_xattrs,
            user_xattrs=args.user_xattrs,
            skip_devices=args.skip_devices,
        )
        tree = apply_build_flags(tree, flags)
    return tree


def _cmd_build(args: argparse.Namespace) -> int:
    import functools

    from .writer import _write_held, write_image

    min_version, max_version = _versions(args)
    if (args.verity_digests or args.enable_verity) and args.objects is None:
        flag = "--enable-verity" if args.enable_verity else "--verity-digests"
        raise UsageError(
            f"{flag} needs --digest-store (the digests come from the imported contents)"
        )
    sources, image = _sources_and_image(args)
    if sources.count("-") > 1:
        raise UsageError("standard input ('-') can be only one SOURCE")
    stdout = _image_stdout() if image == "-" else None
    store = None
    if args.objects is not None:  # opened by the first layer: a dumpfile stores nothing
        store = functools.cache(
            lambda: _module("objects", "an object store").ObjectStore(
                args.objects,
                fsverity=args.verity_digests,
                enable_verity=args.enable_verity,
            )
        )
    options: dict[str, Any] = {
        "backend": args.backend,
        "min_version": min_version,
        "max_version": max_version,
        "progress": True if args.progress else None,
    }
    write: Callable[..., bytes]
    if len(sources) == 1 and sources[0] != "-" and os.path.isdir(sources[0]):
        # the build flags are the scan's own; the Tree is only written
        write = functools.partial(_write_held, [_scanned(args, sources[0])])
    else:
        write = functools.partial(write_image, _built_from_sources(args, sources, store))
    # The reading left the interpreter's free lists full of small objects,
    # each holding an allocator arena of the freed temporaries; the writer's
    # memory comes on top of them.  Emptying them first (a full collection
    # does; about 7 ms at 100k entries) takes the peak of a 100k-entry TOC
    # build from about 181 to 156 MiB.
    import gc

    gc.collect()
    if image is None:  # --print-digest-only: the bytes go nowhere
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            digest = write(null, **options)
        finally:
            os.close(null)
    else:
        if stdout is not None:
            sys.stdout.flush()
        digest = write(image if stdout is None else stdout, **options)
    print(digest.hex(), file=sys.stdout if stdout is None else sys.stderr)
    return 0


def _image_stdout() -> int:
    """Standard output's descriptor for ``-o -``; refused on a terminal, as
    mkcomposefs refuses it."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation
        raise UsageError("-o -: standard output has no file descriptor") from None
    if os.isatty(fd):
        raise UsageError("-o -: standard output is a terminal; refusing to write an image to it")
    return fd


def _add_validate(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check SOURCE and print every problem found, one per line "
        "(exit 1), or a summary line (exit 0)."
    )
    parser.add_argument("source", metavar="SOURCE")
    _add_source_options(parser)
    parser.set_defaults(run=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    try:
        source = load_source(
            args.source, args.source_kind, compat=args.compat, lenient=args.lenient, collect=True
        )
    except ValidationError as exc:
        for problem in exc.problems:
            print(f"{args.source}: {problem}")
        return 1
    print(f"{args.source}: ok, {len(source.tree)} entries ({source.kind})")
    return 0


def _add_dump(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print IMAGE (a composefs image) or SOURCE (dumpfile, TOC, "
        "layer) in the composefs-dump(5) format."
    )
    parser.add_argument("source", metavar="IMAGE|SOURCE")
    _add_source_options(parser)
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="parse an untrusted image in the sandboxed child",
    )
    parser.set_defaults(run=_cmd_dump)


def _cmd_dump(args: argparse.Namespace) -> int:
    from .dumpfile import dump
    from .writer import is_image, read_image

    path: str = args.source
    tree: Tree
    if args.source_kind is None and path != "-" and _file_is_image(path):
        tree = read_image(path, sandbox=args.sandbox)
    elif args.source_kind is None and path == "-":
        data = _read_limited(path)
        if is_image(data):
            tree = read_image(data, sandbox=args.sandbox)
        else:
            tree = _tree_from_stdin_text(data, compat=args.compat, lenient=args.lenient)
    else:
        tree = load_source(path, args.source_kind, compat=args.compat, lenient=args.lenient).tree
    sys.stdout.write(dump(tree))
    sys.stdout.flush()
    return 0


def _tree_from_stdin_text(data: bytes, *, compat: str | None, lenient: bool) -> Tree:
    if data.startswith(_GZIP_MAGIC):
        data = _gunzip_limited(data, "-")
    kind = sniff_source("-", data)
    if kind == "toc" and not lenient:
        toc = _module("toc", "reading a TOC")
        return toc.parse_toc(data, compat=compat)  # type: ignore[no-any-return]
    if kind == "dumpfile" and compat is None:
        dumpfile = _module("dumpfile", "reading a dumpfile")
        return dumpfile.parse_dumpfile(data, strict=not lenient)  # type: ignore[no-any-return]
    if kind in ("toc", "dumpfile"):
        option = "--lenient" if lenient else "--compat"
        raise CommandError(f"-: {option} does not apply to a {kind}")
    raise CommandError("-: standard input is neither an image, a dumpfile nor a TOC")


def _file_is_image(path: str) -> bool:
    from .writer import EROFS_SUPER_OFFSET, is_image

    with open(path, "rb") as stream:
        return is_image(stream.read(EROFS_SUPER_OFFSET + 4))


def _add_digest(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the fs-verity digest (sha256, 4096-byte blocks, no "
        "salt) of each FILE in hex ('-' reads stdin).  For one FILE the line is "
        "the digest alone, as 'mkcomposefs --print-digest' prints an image's; "
        "for several it is 'DIGEST FILE'."
    )
    parser.add_argument("files", metavar="FILE", nargs="+")
    parser.add_argument(
        "-H",
        "--with-filename",
        action="store_true",
        help="print 'DIGEST FILE' also for a single FILE",
    )
    parser.set_defaults(run=_cmd_digest)


def _cmd_digest(args: argparse.Namespace) -> int:
    from .fsverity import fsverity_digest

    named = args.with_filename or len(args.files) > 1
    for path in args.files:
        digest = fsverity_digest(sys.stdin.fileno() if path == "-" else path)
        print(f"{digest.hex()} {path}" if named else digest.hex(), flush=True)
    return 0


# composefs-info's escaping (print_escaped, C locale): \\ \n \r \t by name;
# other bytes outside isgraph (isprint for a path: the space is kept) as \xNN.
def _escape_table(keep_space: bool) -> tuple[str, ...]:
    table = []
    for byte in range(256):
        special = {0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(byte)
        if special is not None:
            table.append(special)
        elif 0x21 <= byte <= 0x7E or (keep_space and byte == 0x20):
            table.append(chr(byte))
        else:
            table.append(f"\\x{byte:02x}")
    return tuple(table)


_PLAIN = bytes(range(0x21, 0x7F)).replace(b"\\", b"")


def _escaped(raw: bytes, table: tuple[str, ...]) -> bytes:
    """``raw`` as composefs-info prints it; linear, and one copy when nothing needs escaping."""
    if not raw.translate(None, _PLAIN):
        return raw
    return "".join([table[byte] for byte in raw]).encode("ascii")


def _info_command(
    description: str, run: Callable[[argparse.Namespace], int], *, store: bool = False
) -> Callable[[argparse.ArgumentParser], None]:
    """The adder of one of composefs-info's commands: IMAGE..., ``--filter``,
    and with ``store`` the object store(s) to look in."""

    def add(parser: argparse.ArgumentParser) -> None:
        parser.description = description
        parser.add_argument("images", metavar="IMAGE", nargs="+")
        parser.add_argument(
            "--filter",
            metavar="NAME",
            action="append",
            help="read only this top-level entry of each image (repeat for several; "
            "composefs-info's option)",
        )
        if store:
            parser.add_argument(
                "--objects",
                "--digest-store",
                "--basedir",
                dest="objects",
                metavar="DIR",
                required=True,
                action="append",
                help="the object store (repeat for several: searched in order, as "
                "a mount searches them)",
            )
        parser.set_defaults(run=run, positional_list="images")

    return add


def _info_trees(args: argparse.Namespace) -> list[Tree]:
    """The images, read by the safe reader, each cut to ``--filter``'s top-level names."""
    from .writer import read_image

    trees = []
    for image in args.images:
        # A FIFO would block the reader until something writes to it.
        if not stat.S_ISREG(os.stat(image).st_mode):
            raise CommandError(f"{image}: not a regular file: an image is read from a file")
        tree = read_image(image)
        if args.filter:
            tree = _filtered(tree, args.filter)
        trees.append(tree)
    return trees


def _filtered(tree: Tree, names: Sequence[str]) -> Tree:
    from .model import ROOT, Hardlink, TreeBuilder

    for name in names:
        if "/" in name:
            raise UsageError(f"--filter {name}: a filter is a single name")
    tops = {b"/" + os.fsencode(name) for name in names}
    builder = TreeBuilder()
    kept: dict[bytes, bytes] = {}  # hardlink target kept outside the filter: first link
    for path, node in tree:
        top = path if path.count(b"/") == 1 else path[: path.index(b"/", 1)]
        if path != ROOT and top not in tops:
            continue
        if isinstance(node, Hardlink):
            target_top = node.target[: (node.target + b"/").index(b"/", 1)]
            if target_top not in tops:  # its inode is cut: the first link kept takes it
                first = kept.get(node.target)
                if first is None:
                    kept[node.target] = path
                    builder.add(path, tree.inode(path))
                    continue
                node = Hardlink(first)
        builder.add(path, node)
    return builder.build()


def _cmd_ls(args: argparse.Namespace) -> int:
    import stat as st

    from .model import ROOT, Hardlink

    path_table = _escape_table(keep_space=True)
    value_table = _escape_table(keep_space=False)
    out = sys.stdout.buffer
    for tree in _info_trees(args):
        lines = []
        for path, node in tree:
            if path == ROOT:
                continue
            line = _escaped(path, path_table)
            if not isinstance(node, Hardlink):  # composefs-info shows a link's name only
                kind = st.S_IFMT(node.mode)
                if kind == st.S_IFDIR:
                    line += b"/\t"
                elif kind == st.S_IFLNK and node.symlink_target is not None:
                    line += b"\t-> " + _escaped(node.symlink_target, value_table)
                elif kind == st.S_IFREG and node.payload is not None:
                    line += b"\t@ " + _escaped(node.payload, value_table)
            lines.append(line)
        if lines:
            out.write(b"\n".join(lines) + b"\n")
    return 0


def _cmd_objects(args: argparse.Namespace) -> int:
    from .objects import image_objects

    _print_lines(image_objects(*_info_trees(args)))
    return 0


def _cmd_missing_objects(args: argparse.Namespace) -> int:
    from .objects import missing_objects

    for store in args.objects:
        if not os.path.isdir(store):
            raise CommandError(f"object store {store} is not a directory")
    _print_lines(missing_objects(*_info_trees(args), objects=args.objects))
    return 0


def _print_lines(lines: list[bytes]) -> None:
    if lines:
        sys.stdout.buffer.write(b"\n".join(lines) + b"\n")


def _add_mount(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s [options] IMAGE [IMAGE ...] MNT"
    parser.description = (
        "Mount IMAGE on MNT with DIR as its object store.  Several "
        "IMAGEs are layers, top first (IMG_TOP ... IMG_BASE): they are mounted "
        "stacked as one overlay, whiteouts and opaque directories of upper "
        "layers hiding what they cover below (Linux >= 6.7)."
    )
    # One positional list, split in _cmd_mount into the images and MNT.
    parser.add_argument(
        "paths",
        metavar="IMAGE [IMAGE ...] MNT",
        nargs="+",
        help="the image (or layer images, top first), then the mount point",
    )
    parser.add_argument(
        "--objects",
        "--basedir",
        dest="objects",
        metavar="DIR",
        required=True,
        action="append",
        help="object store folder (repeat for several, searched in order; "
        "mount.composefs's basedir=)",
    )
    parser.add_argument("--upper", metavar="DIR", help="writable overlay upper directory")
    parser.add_argument("--work", metavar="DIR", help="overlay work directory (with --upper)")
    verity = parser.add_mutually_exclusive_group()
    verity.add_argument(
        "--require-verity",
        action="store_true",
        help="every file must have an fs-verity digest in the image, matched by "
        "its object's kernel fs-verity (else the mount fails)",
    )
    verity.add_argument(
        "--try-verity",
        action="store_true",
        help="check fs-verity digests where the image and objects allow it",
    )
    parser.add_argument(
        "--digest",
        metavar="DIGEST",
        type=_hex_digest,
        action="append",
        help="the image's fs-verity digest (64 hex digits; mount.composefs's "
        "digest=): computed from the image's bytes before mounting, and the mount "
        "is refused unless it is DIGEST.  With several IMAGEs give one per image, "
        "in their order",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="mount even when objects the image needs are missing from the "
        "store(s) (a warning says how many; their files fail to read).  Without "
        "it such a mount is refused",
    )
    idmap = parser.add_argument_group(
        "ID-mapped mount",
        "Show the image's owners shifted: uid/gid C appears as H, for N ids "
        "from C.  Either name a process whose user namespace has the mapping "
        "(--idmap-pid), or give the mapping (--uidmap, --gidmap; repeat for "
        "several ranges; a map not given stays identity) and a user namespace "
        "is made for the mount.",
    )
    idmap.add_argument(
        "--idmap-pid", metavar="PID", type=int, help="use /proc/PID/ns/user's mapping"
    )
    idmap.add_argument("--uidmap", metavar="C:H:N", type=_id_range, action="append")
    idmap.add_argument("--gidmap", metavar="C:H:N", type=_id_range, action="append")
    parser.set_defaults(run=_cmd_mount, positional_list="paths")


def _hex_digest(text: str) -> str:
    """``--digest``'s value: 64 hex digits (argparse reports anything else, exit 2)."""
    try:
        if len(text) == 64 and bytes.fromhex(text):
            return text.lower()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not 64 hex digits")


def _id_range(text: str) -> IdRange:
    """``--uidmap``/``--gidmap``'s ``C:H:N``; argparse reports a malformed one (exit 2)."""
    from ._userns import IdRange

    try:
        return IdRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_mount(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise UsageError("mount needs IMAGE and MNT (several IMAGEs: top first)")
    *images, mountpoint = args.paths
    if (args.upper is None) != (args.work is None):
        raise UsageError("--upper and --work go together")
    if args.idmap_pid is not None and (args.uidmap or args.gidmap):
        raise UsageError("--idmap-pid excludes --uidmap and --gidmap")
    if args.digest is not None and len(args.digest) != len(images):
        raise UsageError(
            f"--digest: one per IMAGE, in their order ({len(args.digest)} for {len(images)})"
        )
    import contextlib
    import warnings

    from ._userns import process_userns, user_namespace

    mount = _module("mount", "mounting")
    with contextlib.ExitStack() as stack:
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always", mount.MissingObjectsWarning)
        stack.callback(_print_warnings, caught)
        userns_fd = None
        if args.idmap_pid is not None:
            userns_fd = stack.enter_context(process_userns(args.idmap_pid))
        elif args.uidmap or args.gidmap:
            userns_fd = stack.enter_context(user_namespace(args.uidmap, args.gidmap))
        options: dict[str, Any] = {
            "objects": args.objects,
            "upperdir": args.upper,
            "workdir": args.work,
            "require_verity": args.require_verity,
            "try_verity": args.try_verity,
            "idmap_userns_fd": userns_fd,
            "allow_missing": args.allow_missing,
        }
        if len(images) == 1:
            digest = None if args.digest is None else args.digest[0]
            mount.mount(images[0], mountpoint, expected_digest=digest, **options)
        else:
            mount.mount_layers(images, mountpoint, expected_digests=args.digest, **options)
    return 0


def _print_warnings(caught: list[Any]) -> None:
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.usage = "%(prog)s check --objects DIR [--repair] [--grace SECONDS] [--naming NAMING]"
    parser.description = (
        "check: read the whole object store DIR and report, one line each, "
        "temporary files left by a killed writer ('.tmp-*' older than the grace "
        "period), objects whose content does not give their name (or whose "
        "kernel fs-verity digest is not their content's), and links or other "
        "odd files where objects or fan-out folders belong.  Nothing is "
        "followed or changed without --repair.  Exit status 1 while a problem "
        "is left."
    )
    parser.add_argument("action", choices=("check",), metavar="check")
    parser.add_argument(
        "--objects",
        "--digest-store",
        dest="objects",
        metavar="DIR",
        required=True,
        help="the object store",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="remove stale temporary files, and links, FIFOs, devices and "
        "sockets planted in the store (never what they point at); a corrupt "
        "object is moved to .corrupt/HEX in the store (kept for a look, out of "
        "every mount's way); a folder where an object belongs is only reported",
    )
    parser.add_argument(
        "--grace",
        metavar="SECONDS",
        type=float,
        default=24 * 3600,
        help="a temporary file written to within this many seconds belongs to a "
        "writer still running and is left alone (default: 86400, a day)",
    )
    parser.add_argument(
        "--naming",
        choices=("sha256", "fsverity"),
        default="sha256",
        help="what names the store's objects: their sha256 (default; "
        "containers/storage, --digest-store) or their fs-verity digest",
    )
    parser.set_defaults(run=_cmd_store)


def _cmd_store(args: argparse.Namespace) -> int:
    from .objects import ObjectStore

    if not os.path.isdir(args.objects):
        raise CommandError(f"object store {args.objects} is not a directory")
    if args.grace < 0:
        raise UsageError(f"--grace {args.grace}: a number of seconds, 0 or more")
    with ObjectStore(args.objects, naming=args.naming) as store:
        report = store.check(repair=args.repair, grace=args.grace)
    for problem in report.problems:
        done = f" ({problem.repaired})" if problem.repaired else ""
        print(f"{problem.name}: {problem.kind}: {problem.reason}{done}")
    repaired = sum(problem.repaired is not None for problem in report.problems)
    print(
        f"{args.objects}: {report.objects} objects checked ({report.bytes} bytes), "
        f"{len(report.problems)} problems"
        + (f", {repaired} repaired" if args.repair else "")
        + f", {report.in_progress} temporary files in progress"
    )
    return 0 if report.clean else 1


def _add_unmount(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mountpoint", metavar="MNT")
    parser.set_defaults(run=_cmd_unmount)


def _cmd_unmount(args: argparse.Namespace) -> int:
    _module("mount", "mounting").unmount(args.mountpoint)
    return 0


def _add_sandbox_info(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Start a sandboxed child, check each lockdown step from "
        "inside it and print 'NAME: yes|no|VALUE' per protection."
    )
    parser.set_defaults(run=_cmd_sandbox_info)


def _cmd_sandbox_info(args: argparse.Namespace) -> int:
    info = _module("sandbox", "the sandbox").sandbox_info()
    for name, value in info.items():
        shown = ("yes" if value else "no") if isinstance(value, bool) else value
        print(f"{name}: {shown}")
    return 0


#: (name, one-line help, adder, modules the command needs): a command is
#: offered when its modules exist.  The adder fills the command's parser.
_COMMANDS: tuple[
    tuple[str, str, Callable[[argparse.ArgumentParser], None], tuple[str, ...]], ...
] = (
    (
        "build",
        "build a composefs image from a dumpfile, TOC or layer(s)",
        _add_build,
        ("writer", "dumpfile"),
    ),
    (
        "validate",
        "check a dumpfile, TOC or layer; print every problem",
        _add_validate,
        ("dumpfile",),
    ),
    ("dump", "print an image or source as composefs-dump(5)", _add_dump, ("dumpfile", "writer")),
    ("digest", "print the fs-verity digest of files", _add_digest, ("fsverity",)),
    (
        "ls",
        "list an image's paths (composefs-info ls)",
        _info_command(
            "List each IMAGE's paths as 'composefs-info ls' does: a directory ends "
            "in '/' and a tab, a symlink shows '-> TARGET', a file with external "
            "content '@ OBJECT'.",
            _cmd_ls,
        ),
        ("writer",),
    ),
    (
        "objects",
        "print the objects an image needs",
        _info_command(
            "Print the objects the IMAGEs need (their files' content in an object "
            "store), each once, sorted: 'composefs-info objects'.",
            _cmd_objects,
        ),
        ("writer", "objects"),
    ),
    (
        "missing-objects",
        "print the objects an image needs that a store lacks",
        _info_command(
            "Print the objects the IMAGEs need that the object store DIR lacks, "
            "each once, sorted: 'composefs-info --basedir=DIR missing-objects'.  "
            "A link or anything but a regular file at an object's name is no "
            "object (the store follows no link).",
            _cmd_missing_objects,
            store=True,
        ),
        ("writer", "objects"),
    ),
    ("mount", "mount a composefs image, or layer images stacked", _add_mount, ("mount",)),
    ("unmount", "unmount a composefs mount", _add_unmount, ("mount",)),
    (
        "store",
        "check an object store (stale temporary files, corrupt objects); --repair",
        _add_store,
        ("objects",),
    ),
    (
        "sandbox-info",
        "show which protections the sandboxed writer gets here",
        _add_sandbox_info,
        ("sandbox",),
    ),
)


def _have(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(f"composefs_py.{module}") is not None


class UsageError(Exception):
    """A usage problem found after parsing (exit status 2)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser, offering the commands this build supports.

    A run parses one command, and each subparser costs argparse's set-up
    (gettext lookups included): ``build_parser(command)`` makes only that
    command's parser when this build offers it, and otherwise (an unknown
    word, a ``--help`` of the command list) each command with its help line
    but no options.  Without ``command`` every command is complete.
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Build, check, dump and mount composefs images."
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    offered = [
        (name, help_line, add)
        for name, help_line, add, needs in _COMMANDS
        if all(_have(module) for module in needs)
    ]
    chosen = [entry for entry in offered if entry[0] == command]
    for name, help_line, add in chosen or offered:
        command_parser = sub.add_parser(name, help=help_line)
        if command is None or chosen:
            add(command_parser)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: the package's version, read only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, nargs=0, help="print the version and exit"
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from . import __version__

        print(f"{PROG} {__version__}")
        parser.exit()


def _command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (the
    top-level parser has no option taking a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):  # LibraryError too: its strerror is the message
        text = exc.strerror or str(exc)
        if exc.filename is not None:
            return f"{os.fsdecode(exc.filename)}: {text}"
        return text
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Usage errors exit through argparse with status 2.
    """
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command_word(argv))
    args, extra = parser.parse_known_args(argv)
    # argparse fills a list positional from one run of words only: words
    # after an option ("build A -o X B", "mount A --objects D MNT") come back
    # here and join the command's list.
    tail: str | None = getattr(args, "positional_list", None)
    if extra:
        if tail is None or any(word.startswith("-") and word != "-" for word in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        getattr(args, tail).extend(extra)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except UsageError as exc:
        parser.error(str(exc))  # exits 2
    except BrokenPipeError:
        # The reader went away (`composefs-py dump x | head`): stop quietly,
        # and keep the interpreter from complaining when it flushes stdout.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except (ComposefsError, CommandError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {_describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return status
