"""A command's output folder (fusedbn.outputs): created on entry, gone again if the command fails."""

from pathlib import Path

import pytest

from fusedbn.outputs import OutputFolderError, output_folder


def test_the_folder_and_its_missing_parents_are_created(tmp_path: Path) -> None:
    with output_folder(tmp_path / "a" / "b") as folder:
        assert folder == tmp_path / "a" / "b" and folder.is_dir()
        (folder / "result.txt").write_text("kept")
    assert (tmp_path / "a" / "b" / "result.txt").read_text() == "kept"


def test_a_failing_block_leaves_no_folder_it_created(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="bad storage"), output_folder(tmp_path / "a" / "b"):
        raise RuntimeError("bad storage")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_block_leaves_no_folder_it_created(tmp_path: Path, interruption: type) -> None:
    with pytest.raises(interruption), output_folder(tmp_path / "out"):
        raise interruption()
    assert not (tmp_path / "out").exists()


def test_a_failing_block_keeps_what_was_written_and_what_existed(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    with pytest.raises(ValueError), output_folder(tmp_path / "existing" / "new" / "deeper") as folder:
        (folder.parent / "study.db").write_text("a study")
        raise ValueError("late")
    assert not (tmp_path / "existing" / "new" / "deeper").exists()  # empty, made here: removed
    assert (tmp_path / "existing" / "new" / "study.db").exists()  # holds a file: kept, and above it
    with pytest.raises(ValueError), output_folder(tmp_path / "existing"):
        raise ValueError("late")
    assert (tmp_path / "existing").is_dir()  # was there before


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(OutputFolderError, match="cannot create the output folder .*taken.*File exists"):
        with output_folder(tmp_path / "taken"):
            pytest.fail("the block must not run")
    with pytest.raises(OutputFolderError, match="Not a directory"):
        with output_folder(tmp_path / "taken" / "below"):
            pytest.fail("the block must not run")
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_a_folder_the_system_refuses_is_a_clear_error_and_creates_nothing() -> None:
    with pytest.raises(OutputFolderError, match="'/proc/fusedbn-nope/out'"):
        with output_folder("/proc/fusedbn-nope/out"):
            pytest.fail("the block must not run")
    assert not Path("/proc/fusedbn-nope").exists()
