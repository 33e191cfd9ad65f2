import os
import stat

import pytest

from modelfusion._atomic import atomic_dir, atomic_path


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_outputs_get_the_usual_mode_and_failures_leave_nothing(tmp_path, umask_022):
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        tmp.write_bytes(b"weights")
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644  # not mkstemp's 0600
    with atomic_dir(tmp_path / "merged") as folder:
        (folder / "model.safetensors").write_bytes(b"weights")
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o755  # not mkdtemp's 0700

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "broken.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "model.safetensors"]
