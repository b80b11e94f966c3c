import argparse
import io
from dataclasses import dataclass

import pytest

from charlm import FakeClock
from nexttoken.config import add_options, check, from_args, load, option, resumed
from nexttoken.errors import UserError
from nexttoken.progress import Progress


@dataclass
class Demo:
    lr: float = option(1e-3, "learning rate", gt=0, le=1)
    steps: int = option(100, "steps", ge=1)
    norm: str = option("pre", "norm placement", choices=("pre", "post"))
    bias: bool = option(True, "biases")
    labels: list[str] = option(help="labels", default_factory=list)
    derived: float = option(0.0, "filled in later", flag=False)
    top_k: int | None = option(None, "optional")


def parse(*argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_options(parser, Demo, presets={"fast": {"lr": 0.01}})
    return parser, parser.parse_args(list(argv))


def test_flags_come_from_the_fields_with_their_types():
    parser, args = parse("--lr", "3e-4", "--steps", "1e3", "--norm", "post", "--no-bias", "--labels", "a, b")
    cfg = from_args(args, Demo)
    assert cfg == Demo(lr=3e-4, steps=1000, norm="post", bias=False, labels=["a", "b"])
    assert "--derived" not in parser.format_help()  # fields declared flag=False stay out of the CLI
    help_text = " ".join(parser.format_help().split())
    assert "default 0.001; fast: 0.01; > 0 and <= 1" in help_text


def test_only_given_flags_replace_the_base():
    _, args = parse("--steps", "7")
    assert from_args(args, Demo, base=Demo(lr=0.5)) == Demo(lr=0.5, steps=7)


@pytest.mark.parametrize("argv", [["--lr", "inf"], ["--lr", "nan"], ["--steps", "2.5"], ["--norm", "mid"]])
def test_the_parser_refuses_non_numbers_and_unknown_choices(argv):
    with pytest.raises(argparse.ArgumentError):
        parse(*argv)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr must be > 0 and <= 1, not 0.0"),
    (["--lr", "2"], "--lr must be > 0 and <= 1, not 2.0"),
    (["--steps", "0"], "--steps must be >= 1, not 0"),
])
def test_values_out_of_their_declared_range_are_refused_by_name(argv, message):
    _, args = parse(*argv)
    with pytest.raises(UserError) as e:
        from_args(args, Demo)
    assert str(e.value) == message


def test_a_saved_config_is_checked_with_the_same_declarations():
    assert load(Demo, {"lr": 0.1, "gone": 3}, "run/config.json") == Demo(lr=0.1)  # unknown keys: an older run's
    with pytest.raises(UserError, match="run/config.json: steps must be >= 1"):
        load(Demo, {"steps": -4}, "run/config.json")
    with pytest.raises(UserError, match="run/config.json: lr must be a finite float"):
        load(Demo, {"lr": "fast"}, "run/config.json")
    with pytest.raises(UserError, match="damaged"):
        load(Demo, [1, 2], "run/config.json")


def test_bools_are_not_numbers_and_optional_fields_take_none():
    with pytest.raises(UserError):
        check(Demo(steps=True))
    assert check(Demo(top_k=None)).top_k is None


def test_a_resumed_run_keeps_its_course():
    saved = Demo(lr=0.1, steps=100)
    assert resumed(saved, {"steps": 200, "lr": 0.1}, adjustable=("steps",)) == Demo(lr=0.1, steps=200)
    with pytest.raises(UserError, match="--lr 0.2 differs from the resumed run's 0.1"):
        resumed(saved, {"lr": 0.2}, adjustable=("steps",))
    with pytest.raises(UserError, match="--labels b,a differs from the resumed run's a,b;"):  # as typed, not a repr
        resumed(Demo(labels=["a", "b"]), {"labels": ["b", "a"]})


def test_progress_without_a_terminal_writes_a_line_every_few_seconds(tmp_path):
    clock, stream = FakeClock(), io.StringIO()
    log = tmp_path / "log.txt"
    with Progress(100, "train", log=log, every_s=5, clock=clock, stream=stream) as bar:
        for _ in range(100):
            clock.now += 0.5
            bar.update(1, loss=1.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # at 5 s, 10 s, ... 50 s: the last is the closing line, not written twice
    assert lines[0] == "train: step 10/100 (10%) loss 1.5 | 5s elapsed, 45s left"
    assert lines[-1].startswith("train: step 100/100 (100%)")
    assert len(log.read_text().splitlines()) == 10


def test_progress_announced_says_what_the_wait_is_for_before_the_first_update(tmp_path):
    clock, stream = FakeClock(), io.StringIO()
    with Progress(128, "sampling", unit="response", log=tmp_path / "log.txt", clock=clock, stream=stream) as bar:
        bar.announce()
        assert stream.getvalue() == "sampling: response 0/128 (0%) | 0s elapsed\n"
        clock.now += 30
        bar.update(128)
    assert stream.getvalue().splitlines()[-1].startswith("sampling: response 128/128 (100%) | 30s elapsed")
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 2


def test_progress_that_is_disabled_writes_nothing(tmp_path):
    stream = io.StringIO()
    with Progress(10, "x", enabled=False, clock=FakeClock(), stream=stream) as bar:
        bar.announce()
        bar.update(10)
    assert stream.getvalue() == ""
