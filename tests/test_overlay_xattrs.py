"""An input's own ``trusted.overlay.*`` xattrs never reach a mount (DESIGN section 4).

The model refuses them (tests/test_model.py), so every input refuses them:
TOCs and dumpfiles have their own tests; here a plain tar layer, whose
xattrs come from PAX ``SCHILY.xattr.*`` records.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from composefs_py import Limits, ValidationError, open_layer


def _tar_with_xattr(path: Path, kind: bytes, name: str, value: str) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("e")
        info.type = kind
        info.mode = 0o755
        info.pax_headers = {f"SCHILY.xattr.{name}": value}
        tar.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(
    ("kind", "name", "value"),
    [
        (tarfile.DIRTYPE, "trusted.overlay.redirect", "/secret"),
        (tarfile.REGTYPE, "trusted.overlay.metacopy", ""),
        (tarfile.DIRTYPE, "trusted.overlay.origin", "x"),
        (tarfile.REGTYPE, "trusted.overlay.opaque", "y"),
    ],
)
def test_a_tar_layers_overlay_xattrs_are_refused(
    kind: bytes, name: str, value: str, tmp_path: Path
) -> None:
    layer = open_layer(_tar_with_xattr(tmp_path / "layer.tar", kind, name, value))
    with pytest.raises(ValidationError) as caught:
        layer.tree()
    assert name in str(caught.value)
    assert caught.value.field == "xattrs"


def test_a_tar_layers_opaque_directory_is_taken(tmp_path: Path) -> None:
    path = _tar_with_xattr(tmp_path / "layer.tar", tarfile.DIRTYPE, "trusted.overlay.opaque", "y")
    tree = open_layer(path).tree()
    assert tree.inode(b"/e").xattrs == ((b"trusted.overlay.opaque", b"y"),)
    assert Limits().allow_overlay_xattrs is False
