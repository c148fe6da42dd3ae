from pathlib import Path

import pytest

from agents.sources.folder import WatchFolder, unique_destination


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def source(tmp_path):
    clock = Clock()
    src = WatchFolder(
        tmp_path / "in", tmp_path / "in" / "done", tmp_path / "in" / "failed", settle_s=1.0, clock=clock
    )
    src.ensure_dirs()
    return src, clock


def test_file_is_ready_only_after_it_settles(source):
    src, clock = source
    f = src.watch_dir / "a.png"
    f.write_bytes(b"x" * 10)
    assert src.poll() == []
    clock.t += 0.5
    assert src.poll() == []
    with f.open("ab") as fh:  # still being written: the timer restarts
        fh.write(b"more")
    assert src.poll() == []
    clock.t += 0.9
    assert src.poll() == []
    clock.t += 0.2
    assert src.poll() == [f]


def test_unsupported_hidden_and_subfolder_entries_are_ignored(source):
    src, clock = source
    (src.watch_dir / "notes.txt").write_text("x")
    (src.watch_dir / ".partial.png").write_bytes(b"x")
    (src.watch_dir / "sub").mkdir()
    (src.watch_dir / "sub" / "b.png").write_bytes(b"x")
    good = src.watch_dir / "c.JPG"
    good.write_bytes(b"x")
    src.poll()
    clock.t += 2
    assert src.poll() == [good]


def test_moves_never_overwrite_and_failures_carry_a_reason(source):
    src, _ = source
    for _ in range(2):
        f = src.watch_dir / "same.png"
        f.write_bytes(b"img")
        src.mark_done(f)
    assert sorted(p.name for p in src.done_dir.iterdir()) == ["same-1.png", "same.png"]
    bad = src.watch_dir / "bad.png"
    bad.write_bytes(b"junk")
    dest = src.mark_failed(bad, "bad.png: not a decodable image")
    assert dest == src.failed_dir / "bad.png"
    assert (src.failed_dir / "bad.png.reason.txt").read_text() == "bad.png: not a decodable image\n"
    assert not bad.exists()


def test_unique_destination_counts_up(tmp_path: Path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "x-1.png").write_bytes(b"")
    assert unique_destination(tmp_path, "x.png") == tmp_path / "x-2.png"
    assert unique_destination(tmp_path, "y.png") == tmp_path / "y.png"
