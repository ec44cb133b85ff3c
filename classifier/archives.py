"""Zip files unpacked safely: no member outside the destination, bounded in files and bytes, clear errors."""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path


class ArchiveError(ValueError):
    """A zip that cannot, or must not, be unpacked; the message says why in words a user can act on."""


def unpack(zip_path: Path, destination: Path, max_bytes: int = 2 * 1024 ** 3, max_files: int = 50_000) -> None:
    """Unpacks zip_path into destination. Refuses members that would land outside it, and archives that unpack
    to more than max_bytes or max_files (by their directory: nothing is written first)."""
    destination = Path(destination).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            if len(members) > max_files or sum(m.file_size for m in members) > max_bytes:
                raise ArchiveError(f"the zip unpacks to more than {max_files} files or {max_bytes} bytes")
            for member in members:
                if not (destination / member.filename).resolve().is_relative_to(destination):
                    raise ArchiveError(f"the zip holds an unsafe path: {member.filename!r}")
            archive.extractall(destination)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        raise ArchiveError(f"not a readable .zip file: {exc}") from None
    except RuntimeError as exc:  # zipfile's word for an encrypted member
        raise ArchiveError(f"the .zip is password-protected ({exc}); zip the files without a password") from None
    except NotImplementedError as exc:  # AES (WinZip), LZMA variants, …
        raise ArchiveError(f"the .zip uses a compression method Python cannot read ({exc}); "
                           "make it with ordinary (deflate) compression") from None
    except (OSError, ValueError) as exc:  # a damaged member that fails its CRC, a bad header, a full disk
        raise ArchiveError(f"could not unpack the .zip: {exc}") from None
