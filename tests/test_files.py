"""The foundation's defences for every reader and printer: regular files of bounded size only, names from
files made safe as file stems, and text from files shown, never obeyed, on the terminal."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from modelfusion._files import MAX_STEM_CHARS, check_readable, read_file, safe_stem
from modelfusion._terminal import escape_controls, terminal_console, terminal_text
from modelfusion.errors import CheckpointError, ModelFusionError

from .hostile_files import SPECIAL_KINDS, finishes, special_file


def _special_files(folder: Path) -> dict[str, Path]:
    files = {kind: special_file(folder, kind, f"{kind}.safetensors") for kind in SPECIAL_KINDS}
    files["socket"] = folder / "sock.skops"
    socket.socket(socket.AF_UNIX).bind(str(files["socket"]))
    return files


@pytest.mark.parametrize("kind", [*SPECIAL_KINDS, "socket"])
def test_only_regular_files_are_read_and_a_fifo_is_never_opened(tmp_path, kind):
    path = _special_files(tmp_path)[kind]
    for read in (lambda: check_readable(path, "checkpoint"), lambda: read_file(path, "checkpoint")):
        error = finishes(read)
        assert isinstance(error, CheckpointError)
        assert "not a regular file" in str(error) and str(path) in str(error)


def test_missing_folders_and_nul_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        check_readable(tmp_path / "missing.safetensors", "checkpoint")
    with pytest.raises(CheckpointError, match="is a folder"):
        check_readable(tmp_path, "checkpoint")
    with pytest.raises(CheckpointError, match="NUL"):
        check_readable(Path("a\x00b"), "checkpoint")


def test_a_link_to_a_regular_file_is_read_and_reads_are_bounded(tmp_path):
    (tmp_path / "real.bin").write_bytes(b"x" * 100)
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    assert read_file(tmp_path / "link.bin", "file") == b"x" * 100
    with pytest.raises(CheckpointError, match="100 bytes; a config is at most 99 bytes"):
        read_file(tmp_path / "real.bin", "config", max_bytes=99)


HOSTILE_NAMES = [
    "/etc/passwd",
    "../../../outside",
    "..",
    ".",
    "",
    ".hidden",
    "a\x00b",
    "line\nbreak",
    "x" * 5000,
    "CON",
    "nul",
    "COM1",
    "lpt9",
    "a/b\\c:d*e?f",
    "\u202eevil",
    "model.safetensors",
    "~",
    "-rf",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_a_name_from_a_file_becomes_a_stem_inside_the_folder(tmp_path, name):
    stem = safe_stem(name)
    assert stem and len(stem) <= MAX_STEM_CHARS + 9
    assert set(stem) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    assert not stem.startswith("-") and stem.split("-")[0].lower() not in ("con", "nul", "com1", "lpt9")
    target = tmp_path / f"{stem}.safetensors"
    target.write_bytes(b"")
    assert target.resolve().parent == tmp_path.resolve()


def test_safe_names_are_kept_and_changed_names_stay_distinct():
    assert safe_stem("mlp_0") == "mlp_0" and safe_stem("cnn-2") == "cnn-2"
    assert safe_stem("a/b") != safe_stem("a_b") and safe_stem("a/b") != safe_stem("a\\b")
    assert safe_stem("") == safe_stem("", "model") != safe_stem(".")


def test_control_characters_are_escaped_and_markup_is_not_parsed():
    hostile = "m[/]\x1b]0;owned\x07\x1b[2J\r\u202e\u200bname\n"
    shown = escape_controls(hostile)
    assert shown == "m[/]\\x1b]0;owned\\x07\\x1b[2J\\r\\u202e\\u200bname\\n"
    assert escape_controls("a\nb\tc", keep="\n\t") == "a\nb\tc"
    assert escape_controls("école ✓ 模型") == "école ✓ 模型"
    buffer = io.StringIO()
    console = terminal_console(file=buffer, width=200)
    console.print(f"member {hostile} [bold]x[/bold] :smile:")
    console.print(terminal_text(hostile))
    text = buffer.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert "m[/]" in text and "[bold]x[/bold]" in text and ":smile:" in text
    # a caller's own console, markup and all, prints our Text objects as they are
    plain = io.StringIO()
    Console(file=plain, width=200).print(terminal_text("[/]oops[link=x]"))
    assert "[/]oops[link=x]" in plain.getvalue()


def test_errors_escape_control_characters_on_one_line():
    error = ModelFusionError("bad member 'x\x1b[2J\ny\u202e'")
    assert str(error) == "bad member 'x\\x1b[2J\\ny\\u202e'"


def test_a_closed_stdout_is_not_a_crash():
    code = "from modelfusion._terminal import terminal_console; terminal_console(piped_width=110).print('hi')"
    done = subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    closed = subprocess.run(f'{sys.executable} -c "{code}" >&-', shell=True, capture_output=True, text=True)
    assert closed.returncode == 0 and closed.stderr == ""
