"""The `nexttoken` command: `nexttoken <domain> <verb> [options]` and `nexttoken demo`.

The core knows no domain by name. A domain is a sub-package whose ``__init__`` defines ``HELP`` (its one line in
``nexttoken --help``) and whose ``cli`` module defines ``register(parser)`` (adds its verbs, each with
``set_defaults(func=...)``) and ``demo(out, device) -> Section``; this module finds them with pkgutil, so a domain
appears in the CLI and the demo as soon as its package exists. A domain's ``cli`` imports torch and its own stages,
so a command imports only the domain it names (``nexttoken --help`` imports none).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import pkgutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType

import nexttoken
from nexttoken.errors import Interrupted, UserError, forget_warnings

ORDER = ("grok", "muse", "jukebox", "instruct")  # the report's order; any other domain follows alphabetically


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option on one line (no usage dump) and exits with code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


@functools.cache
def domains() -> dict[str, str]:
    """Every domain package (a sub-package with a ``cli`` module) and its one-line help, in the report's order."""
    found = {}
    for info in pkgutil.iter_modules(nexttoken.__path__):
        if info.ispkg and importlib.util.find_spec(f"nexttoken.{info.name}.cli") is not None:
            package = importlib.import_module(f"nexttoken.{info.name}")
            found[info.name] = getattr(package, "HELP", None) or (package.__doc__ or info.name).strip().split("\n")[0]
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def domain(name: str) -> ModuleType:
    return importlib.import_module(f"nexttoken.{name}.cli")


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")


def build_parser(argv: list[str]) -> ArgumentParser:
    """The parser for this command line: every domain is listed, and the one it names gets its verbs."""
    named = next((a for a in argv if not a.startswith("-")), None)
    parser = ArgumentParser(prog="nexttoken", description=nexttoken.__doc__)
    parser.add_argument("--version", action="version", version=f"nexttoken {nexttoken.__version__}")
    sub = parser.add_subparsers(dest="domain", required=True, metavar="{" + ",".join([*domains(), "demo"]) + "}")
    for name, help in domains().items():
        p = sub.add_parser(name, help=help, description=help)
        if name == named:
            domain(name).register(p)
    demo = sub.add_parser("demo", help="run every pipeline at its CPU-sized default and write one HTML report")
    demo.add_argument("--out", type=Path, default=None, help="report folder (default runs/demo-<time>)")
    demo.add_argument("--only", default=None, metavar="A,B",
                      help=f"comma-separated domains to include: {', '.join(domains()) or 'none'} (default: all)")
    add_device_option(demo)
    demo.set_defaults(func=run_demo)
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from nexttoken.report import Section, render
    from nexttoken.training import pick_device

    found = domains()
    wanted = list(found) if args.only is None else [d.strip() for d in args.only.split(",") if d.strip()]
    if not wanted:
        raise UserError(f"--only needs at least one domain, not {args.only!r}; available: {', '.join(found) or 'none'}")
    unknown = [d for d in wanted if d not in found]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r}; available: {', '.join(found) or 'none'}")
    wanted = list(dict.fromkeys(wanted))  # a domain named twice runs once
    device = pick_device(args.device)
    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # its runs and report would be overwritten
        raise UserError(f"{out} is not an empty folder; the demo writes a new one (choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    sections, failed = [], []
    for name in wanted:
        print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            section = domain(name).demo(out / name, device)
        except UserError as e:  # what the user can mend (a full disk, a missing soundfont...): its one line
            failed.append(name)
            print(f"nexttoken: demo {name}: {e}", file=sys.stderr)
            section = Section(f"{name}: failed").text(str(e))
        except Exception:  # one broken pipeline must not hide the others' results
            failed.append(name)
            section = Section(f"{name}: failed").code(traceback.format_exc())
        sections.append(section.text(f"({name} took {time.time() - t0:.0f} s on {device.type})"))
    if not sections:
        sections.append(Section("No pipelines").text("No domain package is installed yet."))
    report = render("nexttoken demo", sections, out / "report.html",
                    intro=f"Every pipeline at its CPU-sized default, run on {device.type}.")
    print(f"report: {report}")
    if failed:
        print(f"nexttoken: demo sections failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum, frame) -> None:
    raise Interrupted("", signum=signum)  # SIGTERM ends a command as Ctrl-C does: cleanly, with the message below


def _check_processes(args: argparse.Namespace) -> None:
    """Under torchrun (WORLD_SIZE > 1) only the verbs a domain marks ``distributed=True`` run; each process of those
    trains its share, and only rank 0 prints (every process would print the same). Any other verb would run N times
    over the same files, so it is refused."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if not getattr(args, "distributed", False):
        verb = f"{args.domain} {getattr(args, 'verb', '')}".strip()
        raise UserError(f"`nexttoken {verb}` runs in one process; start it without torchrun (the training "
                        f"commands are the ones that run on several)")
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")


def _check_resume_out(args: argparse.Namespace) -> None:
    """A resumed run continues in its own folder: an --out that names another would be ignored, so it is refused."""
    resume, out = getattr(args, "resume", None), getattr(args, "out", None)
    if isinstance(resume, Path) and out is not None and Path(out).resolve() != resume.resolve():
        raise UserError(f"--resume {resume} continues in that folder; leave out --out {out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    forget_warnings()
    try:
        _check_processes(args)
        _check_resume_out(args)
        code = args.func(args) or 0
        if "torch.distributed" in sys.modules:  # a command that trained under torchrun ends its process group
            from nexttoken.distributed import shutdown_distributed

            shutdown_distributed()
        return code
    except UserError as e:
        print(f"nexttoken: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nexttoken grok table | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise for SIGPIPE
        return 0
    except OSError as e:  # a file the user named cannot be read or written: permissions, a full disk, a folder
        where = f": {e.filename}" if e.filename else ""
        print(f"nexttoken: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or an Interrupted that says where the work stopped and which signal
        said = str(e)
        print(f"nexttoken: interrupted{': ' + said if said else ''}", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
