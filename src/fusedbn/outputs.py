"""The output folder of a command (``--out``): created when the command starts writing, and gone again when
the command stops on an error before anything was written into it."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputFolderError(ValueError):
    """An output folder that cannot be created; the message names the folder and the reason."""


@contextmanager
def output_folder(path: str | Path) -> Iterator[Path]:
    """Create the folder ``path`` and its missing parents, and yield it; :class:`OutputFolderError` when it
    cannot be created. If the block raises, the folders created here that are still empty are removed."""
    path = Path(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputFolderError(
                f"cannot create the output folder {str(path)!r}: {error.strerror or error}"
            ) from None
        yield path
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except FileNotFoundError:  # the creation failed below this folder
                continue
            except OSError:  # not empty: keep it and the folders above it
                break
        raise
