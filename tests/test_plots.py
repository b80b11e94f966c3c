"""Plots of names in any script: a letter matplotlib's font lacks is drawn with an installed font that has it, and a
letter no font has is one warning per command, not one per letter and plot."""

import shutil
import warnings
from pathlib import Path

import matplotlib
import pytest
from matplotlib import font_manager

from nexttoken import plots
from nexttoken.cli import main as run_cli
from nexttoken.errors import forget_warnings, warn


@pytest.fixture
def fresh_fonts(monkeypatch):
    """No fallback found yet in this process, and no warning said yet."""
    monkeypatch.setattr(plots, "_FALLBACK", [])
    monkeypatch.setattr(plots, "_SOUGHT", set())
    forget_warnings()


def bars(path: Path, names: list[str]) -> Path:
    fig, ax = plots.figure()
    ax.bar(names, range(1, len(names) + 1))
    ax.set_title(" / ".join(names))
    return plots.save(fig, path)


def test_a_letter_the_default_font_lacks_is_drawn_with_an_installed_font_that_has_it(fresh_fonts, monkeypatch,
                                                                                    tmp_path, capsys):
    """As on a machine with a CJK font installed after matplotlib listed its fonts: the font is found and used. STIX
    (shipped with matplotlib) stands in for it: it has the watch sign U+231A, DejaVu Sans has not."""
    installed = shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "STIXGeneral.ttf", tmp_path)
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [str(installed)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = bars(tmp_path / "watch.png", ["\u231a", "b"])
    assert png.read_bytes().startswith(b"\x89PNG")
    assert plots._FALLBACK == ["STIXGeneral"]
    assert not [w for w in caught if "Glyph" in str(w.message)] and capsys.readouterr().err == ""


def test_letters_no_font_has_are_one_warning_per_command(fresh_fonts, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bars(tmp_path / "a.png", ["\ue000\ue001", "b"])
        bars(tmp_path / "b.png", ["\ue002"])
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
    assert not [w for w in caught if "Glyph" in str(w.message)]  # matplotlib's one warning per letter and draw
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nexttoken: warning: no installed font draws") and "boxes" in err[0]


def test_a_once_warning_is_said_once_per_command(capsys):
    forget_warnings()
    for _ in range(3):
        warn("every stage would say this", once="stage fact")
    warn("said each time")
    warn("said each time")
    assert capsys.readouterr().err.splitlines() == ["nexttoken: warning: every stage would say this"] + \
        ["nexttoken: warning: said each time"] * 2
    assert run_cli(["grok", "table", "--op", "x+y", "--p", "3"]) == 0  # a new command may say it again
    capsys.readouterr()
    warn("every stage would say this", once="stage fact")
    assert capsys.readouterr().err == "nexttoken: warning: every stage would say this\n"
