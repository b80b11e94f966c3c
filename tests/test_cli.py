import subprocess
import sys

import pytest
import torch


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nexttoken", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["no-such-domain"], "invalid choice"),
        (["demo", "--only", "nope"], "unknown domain 'nope'"),
        (["demo", "--only", ","], "--only needs at least one domain, not ','; available: grok"),
        (["demo", "--bogus-option"], "unrecognized arguments"),
        (["demo", "--out", "/"], "/ is not an empty folder; the demo writes a new one"),
    ],
)
def test_bad_input_gives_one_line_and_exit_code_2(args, message, tmp_path):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_demo_help_names_the_domains_only_takes():
    proc = run_cli("demo", "--help")
    assert proc.returncode == 0 and "grok, muse" in " ".join(proc.stdout.split()), proc.stdout


def test_top_level_help_lists_every_domain_without_importing_them():
    code = ("import sys; from nexttoken.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.endswith('.cli')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "['nexttoken.cli']"  # neither torch nor a domain's cli
    for line in ("grok ", "muse ", "jukebox ", "instruct ", "demo "):
        assert f"\n    {line}" in proc.stdout, proc.stdout


def test_a_domain_gets_its_verbs():
    proc = run_cli("jukebox", "--help")
    assert proc.returncode == 0 and "train-prior" in proc.stdout and "sample" in proc.stdout, proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_gpu_is_a_clear_error(tmp_path):
    proc = run_cli("demo", "--device", "cuda", "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nexttoken: error: --device cuda asked for, but PyTorch sees no CUDA GPU (is a CUDA build of torch installed?)"
    ]


def test_a_failing_demo_section_keeps_the_others_and_says_a_user_error_in_one_line(tmp_path, monkeypatch, capsys):
    import types

    from nexttoken import cli
    from nexttoken.errors import UserError
    from nexttoken.report import Section

    def demo_of(name):
        def demo(out, device):
            if name == "grok":
                raise UserError("the disk is full")
            if name == "muse":
                raise RuntimeError("a bug")
            return Section(f"{name} section")
        return types.SimpleNamespace(demo=demo)

    monkeypatch.setattr(cli, "domain", demo_of)
    assert cli.main(["demo", "--only", "grok,muse,jukebox", "--out", str(tmp_path / "d"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "nexttoken: demo grok: the disk is full" in err and "demo sections failed: grok, muse" in err, err
    html = (tmp_path / "d" / "report.html").read_text()
    assert "the disk is full" in html and "RuntimeError: a bug" in html and "jukebox section" in html
