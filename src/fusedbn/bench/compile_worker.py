"""The compile gate's worker: compiles kernel specialisations with the Triton it imports, one at a time.

``python -m fusedbn.bench.compile_worker`` reads one JSON task per line on stdin and answers each with
one JSON line on stdout. A task names a kernel (``module:name``), the arguments of one launch as the
gate recorded them (a tensor as its dtype and whether its address is 16-byte aligned, every other
argument as its value) and a target (``80``, ``90``, ``100``). The worker turns the launch into a
specialisation with Triton's own binder (``JITFunction.run`` in warm-up mode on a fake driver, whose
compile step is replaced by one that keeps what the binder decided: signature, constexprs,
attributes and options), compiles that with ``triton.compile(ASTSource(...), target=...)``, and reads
the cubin with the cuobjdump and nvdisasm that ship in the Triton wheel: registers, local memory,
spill instructions, and the width of every global load and store, each tied to the source line of the
``tl.load``/``tl.store`` it comes from.

A compiler that crashes takes the worker with it; the gate (compile_check.py) sees the process die and
records the crash. Which Triton this is follows ``sys.path``: the gate puts another version's site
folder first to check it.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

WARP_SIZE = 32


class BindingDriver:
    """The parts of a Triton driver that binding asks for; the target is the one compiled for."""

    def __init__(self, capability: int) -> None:
        self.target = GPUTarget("cuda", capability, WARP_SIZE)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


def stand_in(arg: Any) -> Any:
    """A launch argument for the binder: a recorded tensor becomes a small CPU tensor of its dtype
    whose address is 16-byte aligned or not, as the recorded one was; other values stay as they are."""
    if not isinstance(arg, dict):
        return arg
    dtype = getattr(torch, arg["dtype"])
    itemsize = torch.empty((), dtype=dtype).element_size()
    # torch's CPU allocator aligns to 64 bytes; one element in is not 16-byte aligned (itemsize < 16).
    offset = 0 if arg["aligned"] else 1
    tensor = torch.empty(64 // itemsize + offset, dtype=dtype)[offset:]
    assert (tensor.data_ptr() % 16 == 0) == arg["aligned"]
    return tensor


def bind(task: dict[str, Any]) -> tuple[JITFunction, dict[str, Any]]:
    """The kernel's JITFunction and what Triton's binder makes of the task's launch."""
    module_name, name = task["kernel"].split(":")
    kernel = getattr(importlib.import_module(module_name), name)
    jit = JITFunction(kernel.fn)
    decided: dict[str, Any] = {}

    def keep(key, signature, device, constexprs, options, attrs, warmup):
        decided.update(signature=signature, constexprs=constexprs, options=options, attrs=attrs)
        return None

    jit._do_compile = keep  # the one hook every Triton since 3.3 calls with these arguments
    triton.runtime.driver.set_active(BindingDriver(task["capability"]))
    args = [stand_in(arg) for arg in task["args"]]
    jit.run(*args, grid=tuple(task["grid"]), warmup=True, **task["kwargs"])
    return jit, decided


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _run_tool(name: str, *args: str) -> str:
    done = subprocess.run([_tool(name), *args], capture_output=True, text=True, check=True)
    return done.stdout


RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
LINE_INFO = re.compile(r'//## File "([^"]+)", line (\d+)')
INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
WIDTH_SUFFIX = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128, "256": 256}


def access_width(opcode: str) -> int:
    """Bits moved per thread by an LDG/STG opcode (``LDG.E.128`` -> 128; no size suffix: 32)."""
    for part in opcode.split(".")[1:]:
        if part in WIDTH_SUFFIX:
            return WIDTH_SUFFIX[part]
    return 32


def sass_accesses(cubin_path: str) -> tuple[list[tuple[str, int, str]], Counter]:
    """Global accesses of a cubin, each as (file, line, opcode), and a count of every opcode's base.

    The SASS comes from nvdisasm with line information, so each access names the source line of
    the tl.load or tl.store it implements.
    """
    sass = _run_tool("nvdisasm", "-g", "-c", cubin_path)
    where = ("", 0)
    accesses = []
    opcodes: Counter = Counter()
    for text in sass.splitlines():
        located = LINE_INFO.search(text)
        if located:
            where = (located.group(1), int(located.group(2)))
            continue
        found = INSTRUCTION.search(text)
        if not found:
            continue
        opcode = found.group(1)
        base = opcode.split(".")[0]
        opcodes[base] += 1
        if base in ("LDG", "STG"):
            accesses.append((*where, opcode))
    return accesses, opcodes


LOC_DEFINITION = re.compile(r"^#(loc\d*) = loc\((.*)\)\s*$", re.MULTILINE)
LOC_FILE = re.compile(r'^"([^"]+)":(\d+):\d+')
LOC_REFERENCE = re.compile(r"#(loc\d*)")
MEMORY_OP = re.compile(
    r"\btt\.(load|store) .*?: tensor<((?:\d+x)+)!tt\.ptr<(\w+)>.*loc\(#(loc\d*)\)\s*$", re.MULTILINE
)


def _resolve(loc: str, table: dict[str, str]) -> tuple[str, int] | None:
    """The innermost source (file, line) of an MLIR location (callsites resolve to the callee)."""
    for _ in range(64):
        body = table.get(loc)
        if body is None:
            return None
        found = LOC_FILE.match(body)
        if found:
            return found.group(1), int(found.group(2))
        reference = LOC_REFERENCE.search(body)
        if reference is None:
            return None
        loc = reference.group(1)
    return None


def tile_memory_ops(ttgir: str) -> dict[tuple[str, int], tuple[str, str]]:
    """Source (file, line) -> (load or store, element type) of every access to a 3-D tile.

    Tiles are the [BLOCK_N, BLOCK_S, BLOCK_C] blocks of x, y, dy, dx, residuals and ReLU masks; the
    other accesses read or write per-channel values and partial sums.
    """
    table = dict(LOC_DEFINITION.findall(ttgir))
    found = {}
    for kind, dims, element, loc in MEMORY_OP.findall(ttgir):
        if dims.count("x") != 3:
            continue
        where = _resolve(loc, table)
        if where is not None:
            found[where] = (kind, element)
    return found


POINTER_NAME = re.compile(r"\b(\w+)_ptr\b")


def access_name(path: str, line: int) -> str:
    """The tensor a source line reads or writes, named after its pointer (``dy_ptr + ...`` -> dy)."""
    try:
        text = Path(path).read_text(encoding="utf-8").splitlines()[line - 1]
    except (OSError, IndexError):
        return f"{Path(path).name}:{line}"
    found = POINTER_NAME.search(text)
    return found.group(1) if found else text.strip()


def inspect(compiled: Any) -> dict[str, Any]:
    """Registers, local memory, spills, shared memory and access widths of a compiled kernel."""
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        Path(cubin).write_bytes(compiled.asm["cubin"])
        usage = RESOURCE.search(_run_tool("cuobjdump", "-res-usage", cubin))
        accesses, opcodes = sass_accesses(cubin)
    registers, stack, static_shared, local = (int(v) for v in usage.groups())
    tiles = tile_memory_ops(compiled.asm["ttgir"])
    tile_widths: dict[tuple[str, str, str], Counter] = {}
    other: dict[str, Counter] = {"load": Counter(), "store": Counter()}
    for path, line, opcode in accesses:
        kind = "load" if opcode.startswith("LDG") else "store"
        width = access_width(opcode)
        if (path, line) in tiles:
            _, element = tiles[(path, line)]
            key = (access_name(path, line), kind, element)
            tile_widths.setdefault(key, Counter())[width] += 1
        else:
            other[kind][width] += 1
    return {
        "num_warps": compiled.metadata.num_warps,
        "registers": registers,
        "stack_bytes": stack,
        "local_bytes": local,
        "spill_stores": opcodes["STL"],
        "spill_loads": opcodes["LDL"],
        "shared_bytes": max(compiled.metadata.shared, static_shared),
        "tile_accesses": [
            {"tensor": name, "kind": kind, "element": element,
             "widths": {str(w): n for w, n in sorted(count.items())}}
            for (name, kind, element), count in sorted(tile_widths.items())
        ],
        "other_accesses": {
            kind: {str(w): n for w, n in sorted(count.items())} for kind, count in other.items()
        },
    }


def specialisation_text(decided: dict[str, Any]) -> str:
    """The binder's decision in words: each argument's type, 16-byte divisibility and constants."""
    parts = []
    attrs = {path[0]: value for path, value in decided["attrs"].items() if len(path) == 1}
    for index, (name, kind) in enumerate(decided["signature"].items()):
        if kind == "constexpr":
            value = decided["constexprs"].get((index,))
            parts.append(f"{name}={value}")
        elif any(attr[0] == "tt.divisibility" for attr in attrs.get(index, [])):
            parts.append(f"{name}:{kind}:16")
        else:
            parts.append(f"{name}:{kind}")
    return ", ".join(parts)


def compile_task(task: dict[str, Any]) -> dict[str, Any]:
    """Bind, compile and inspect one task; an exception becomes an ``error`` result."""
    try:
        jit, decided = bind(task)
        started = time.perf_counter()
        compiled = triton.compile(
            ASTSource(jit, decided["signature"], decided["constexprs"], decided["attrs"]),
            target=GPUTarget("cuda", task["capability"], WARP_SIZE),
            options=decided["options"].__dict__,
        )
        seconds = time.perf_counter() - started
        return {
            "status": "ok", "compile_s": round(seconds, 3),
            "specialisation": specialisation_text(decided), **inspect(compiled),
        }
    except Exception as error:  # a compile error is a result, not the end of the worker
        lines = traceback.format_exception_only(type(error), error)
        return {"status": "error", "error": "".join(lines).strip()[-2000:]}


def main() -> None:
    """Answer every task line on stdin with a result line on stdout, in order."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the compiler prints must not mix with the results
    hello = {"triton": triton.__version__, "triton_path": str(Path(triton.__file__).parent)}
    out.write(json.dumps(hello) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(compile_task(json.loads(line))) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
