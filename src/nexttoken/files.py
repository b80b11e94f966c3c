"""Files written whole or not at all, and read back with one clear error: text, JSON, and tensors with their JSON
metadata in one safetensors file (checkpoints, weights, codes), the optimizer's and the random generators' state
among them.

Every write goes to a unique temporary name in the same folder and is then renamed, so a killed process never leaves
a corrupt file behind (only a hidden temporary one, which ``runs`` removes when it next claims the folder).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from nexttoken.errors import UserError

UMASK = os.umask(0)
os.umask(UMASK)


# ---- atomic writes -----------------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes files private (0600); give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=jsonable) + "\n")


def jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


T = TypeVar("T")


def parse_lines(path: str | Path, lines: list[str], parse: Callable[[str], T], what: str) -> list[tuple[int, T]]:
    """(line number, value) for each line of a file a process appends to, as ``parse`` reads it. Blank lines and a
    half-written last line (a killed writer) are skipped; any other line ``parse`` refuses (a ValueError saying why)
    is damage, named by its number: a resume, which rewrites the file, would otherwise drop it unseen."""
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append((n, parse(line)))
        except ValueError as e:
            if line.strip() and n < len(lines):
                raise UserError(f"{path}: line {n} is not {what}: {e}; restore the file or delete that line") from None
    return out


def read_text(path: str | Path) -> str:
    """A text file a user gave, as UTF-8 (a byte-order mark dropped, as spreadsheets write one); a missing file, a
    folder or other bytes are a UserError that names it.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "bad.txt"; _ = p.write_bytes(b"caf\\xe9")
    >>> read_text(p)
    Traceback (most recent call last):
    nexttoken.errors.UserError: ... is not UTF-8 text (byte 3 is 0xe9); save it as UTF-8
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a text file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}); save it as UTF-8") \
            from None


def read_json(path: str | Path) -> Any:
    """A JSON file; a missing or damaged one is a UserError that names it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as e:
        raise UserError(f"{path} is damaged ({e})") from None


# ---- tensors + JSON in one safetensors file --------------------------------------------------------------------------
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Write tensors and a JSON-able ``meta`` dict (kept in the safetensors header) atomically."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"meta": json.dumps(meta or {}, default=jsonable)}
    atomic_write_bytes(path, st_save(plain, metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and meta of a file written by ``save_tensors``; a damaged file is one UserError that names it."""
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise _damaged(path, e) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is damaged (its header holds no settings)")
    return tensors, meta


def load_meta(path: str | Path) -> dict:
    """The meta of a file written by ``save_tensors``, without reading its tensors ({} when there is no file)."""
    if not Path(path).is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
    except Exception as e:  # as load_tensors
        raise _damaged(path, e) from None
    return meta if isinstance(meta, dict) else {}


def _damaged(path: str | Path, error: Exception) -> UserError:
    return UserError(f"{path} is damaged ({str(error).splitlines()[0][:120]}); delete it to start over from the last "
                     f"good state, or train again")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
