"""`condnet.files.write_atomically`: the one writer of checkpoints, configs, exports and caches."""

import os
import stat

import pytest

from condnet.errors import CondnetError
from condnet.files import write_atomically


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """A results folder shared with colleagues stays readable to them under umask 022 (the
    temporary file behind the atomic write is created 0600 by mkstemp)."""
    previous = os.umask(umask)
    try:
        result = write_atomically(tmp_path / "f.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(previous)
    assert result == 1  # what the writer returned
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary file left


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(CondnetError, match="no such folder"):
        write_atomically(tmp_path / "nowhere" / "f.txt", lambda tmp: None)
