"""The compile gate's worker: compiles kernel specialisations with the Triton it imports, one at a time.

``python -m fusedbn.bench.compile_worker`` answers each JSON task line on stdin (a kernel ``module:name``, one
launch's arguments as the gate recorded them, a target capability) with one JSON line on stdout: the launch
bound by Triton's own binder, compiled with ``triton.compile`` for the target, and read from the cubin with
the Triton wheel's cuobjdump (registers, local memory, spills, the width of every global load and store, each
tile access named after its tensor through the PTX). A compiler crash takes the worker with it; the gate sees
it die. Which Triton this is follows ``sys.path``.
"""

import functools
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from fusedbn.bench.fake_gpu import fake_driver

WARP_SIZE = 32


def stand_in(arg: Any) -> Any:
    """A launch argument for the binder: a recorded tensor becomes a small CPU tensor of its dtype, 16-byte
    aligned or not as recorded; other values stay as they are."""
    if not isinstance(arg, dict):
        return arg
    dtype = getattr(torch, arg["dtype"])
    # torch's CPU allocator aligns to 64 bytes; one element in is not 16-byte aligned (itemsize < 16).
    offset = 0 if arg["aligned"] else 1
    tensor = torch.empty(64 // dtype.itemsize + offset, dtype=dtype)[offset:]
    assert (tensor.data_ptr() % 16 == 0) == arg["aligned"]
    return tensor


@functools.cache
def _jit_function(kernel: str, capability: int) -> JITFunction:
    """A JITFunction of the kernel ``module:name``, one per target: Triton keeps the binder and options of the
    first target it binds for."""
    module_name, name = kernel.split(":")
    return JITFunction(getattr(importlib.import_module(module_name), name).fn)


def bind(task: dict[str, Any]) -> tuple[JITFunction, dict[str, Any]]:
    """The kernel's JITFunction and what Triton's binder makes of the task's launch."""
    jit = _jit_function(task["kernel"], task["capability"])
    decided: dict[str, Any] = {}

    def keep(key, signature, device, constexprs, options, attrs, warmup):
        decided.update(signature=signature, constexprs=constexprs, options=options, attrs=attrs)
        return None

    jit._do_compile = keep  # the one hook every Triton since 3.3 calls with these arguments
    args = [stand_in(arg) for arg in task["args"]]
    with fake_driver(GPUTarget("cuda", task["capability"], WARP_SIZE)):
        jit.run(*args, grid=tuple(task["grid"]), warmup=True, **task["kwargs"])
    return jit, decided


def _run_tool(name: str, *args: str) -> str:
    """The output of the Triton wheel's CUDA tool ``name`` run with ``args``."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return subprocess.run([str(tool), *args], capture_output=True, text=True, check=True).stdout


RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
SASS_WIDTH_SUFFIX = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128, "256": 256}


def sass_width(opcode: str) -> int:
    """Bits per thread of an LDG/STG opcode (``LDG.E.128`` -> 128; no size suffix: 32)."""
    return next((SASS_WIDTH_SUFFIX[part] for part in opcode.split(".")[1:] if part in SASS_WIDTH_SUFFIX), 32)


PTX_POINTER_PARAM = re.compile(r"\.param \.u64 \.ptr [^\n]*?_param_(\d+)")
PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.:]*)\s+([^;]*);", re.MULTILINE)
PTX_PARAM_LOAD = re.compile(r"\[\w+_param_(\d+)\]")
PTX_REGISTER = re.compile(r"%\w+")
PTX_ADDRESS = re.compile(r"\[\s*(%\w+)")


def ptx_width(opcode: str) -> int:
    """Bits per thread of a PTX ld/st opcode (``ld.global.v4.b32`` -> 128)."""
    vector = re.search(r"\.v(\d+)\b", opcode)
    bits = re.findall(r"\.[bsuf](\d+)\b", opcode)
    return (int(vector.group(1)) if vector else 1) * int(bits[-1])


def ptx_accesses(ptx: str) -> list[tuple[str, int, int | None]]:
    """Global accesses in PTX as (load or store, bits, pointer parameter or None): each address traced back
    through the registers it is computed from to the one pointer parameter it reads."""
    pointers = {int(n) for n in PTX_POINTER_PARAM.findall(ptx)}
    sources: dict[str, set[str]] = {}
    params: dict[str, int] = {}
    accesses = []
    for opcode, operands in PTX_INSTRUCTION.findall(ptx):
        if opcode.startswith(("ld.global", "st.global")):
            address = PTX_ADDRESS.search(operands)
            kind = "load" if opcode.startswith("ld") else "store"
            accesses.append((kind, ptx_width(opcode), address.group(1) if address else None))
            continue
        registers = PTX_REGISTER.findall(operands)
        if not registers or opcode.startswith(("st.", "bra", "bar")):
            continue
        target, used = registers[0], registers[1:]
        param = PTX_PARAM_LOAD.search(operands)
        if opcode.startswith("ld.param") and param:
            params[target] = int(param.group(1))
        sources.setdefault(target, set()).update(used)

    def pointer_of(register: str | None) -> int | None:
        seen, stack, found = set(), [register], set()
        while stack:
            reg = stack.pop()
            if reg is None or reg in seen:
                continue
            seen.add(reg)
            if params.get(reg) in pointers:
                found.add(params[reg])
            stack.extend(sources.get(reg, ()))
        return found.pop() if len(found) == 1 else None

    return [(kind, width, pointer_of(address)) for kind, width, address in accesses]


TTGIR_FUNCTION = re.compile(r"tt\.func public @\w+\((.*)\)")
TTGIR_DEFINITION = re.compile(r"^\s*(%[\w.]+)(?::\d+)? = [\w.]+ (%[\w.]+)", re.MULTILINE)
TTGIR_ITER_ARG = re.compile(r"(%[\w.]+) = (%[\w.]+)")
TTGIR_TILE_ACCESS = re.compile(
    r"\btt\.(?:load|store) (%[\w.]+)[^\n]*: tensor<(?:\d+x){3}!tt\.ptr<\w+>", re.MULTILINE
)


def tile_parameters(ttgir: str) -> set[int]:
    """Kernel parameters (by position) that 3-D tiles (the [BLOCK_N, BLOCK_S, BLOCK_C] blocks of x, y, dy, dx,
    residuals and ReLU masks) are loaded from or stored to, each access's pointer traced back through the
    first operand of the ops computing it to a function argument."""
    signature = TTGIR_FUNCTION.search(ttgir).group(1)
    arguments = {name: i for i, name in enumerate(re.findall(r"(%[\w.]+): ", signature))}
    first_operand = dict(TTGIR_DEFINITION.findall(ttgir))
    for loop in re.findall(r"iter_args\(([^)]*)\)", ttgir):
        first_operand.update(TTGIR_ITER_ARG.findall(loop))
    found = set()
    for value in TTGIR_TILE_ACCESS.findall(ttgir):
        for _ in range(256):
            if value in arguments:
                found.add(arguments[value])
                break
            if value not in first_operand:
                break
            value = first_operand[value]
    return found


# Registers of an SM (all GPUs since sm_80), and the most one thread may have.
REGISTER_FILE = 65536
MAX_THREAD_REGISTERS = 255


def register_limit(num_warps: int) -> int:
    """The most registers a thread of a ``num_warps`` block can have (allocated 8 at a time)."""
    return min(MAX_THREAD_REGISTERS, REGISTER_FILE // (num_warps * WARP_SIZE) // 8 * 8)


def _widths(count: Counter) -> dict[str, int]:
    return {str(width): n for width, n in sorted(count.items())}


PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores")


def spill_bytes_at_o1(ptx: str, capability: int) -> int:
    """Spill store bytes when the target's ptxas compiles ``ptx`` at -O1, where it does not trade registers
    for occupancy: a kernel that still spills there is short of registers."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        Path(source).write_text(ptx, encoding="utf-8")
        done = subprocess.run(
            [get_ptxas(capability).path, "-v", "--opt-level=1",
             f"--gpu-name={sm_arch_from_capability(capability)}", source, "-o", source + ".o"],
            capture_output=True, text=True, check=True,
        )
    return sum(int(n) for n in PTXAS_SPILLS.findall(done.stderr + done.stdout))


def inspect(compiled: Any, parameter_names: list[str], capability: int) -> dict[str, Any]:
    """Registers, local memory, spills, shared memory and access widths of a compiled kernel.

    ``parameter_names``: its runtime parameters in order. A kernel that spills is compiled again at -O1. The
    SASS gives every load and store's width; each tile access is named after its pointer parameter (``dy_ptr``
    -> dy) with its PTX width; ``sass_agrees``: the SASS has the PTX's widths and no other.
    """
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        Path(cubin).write_bytes(compiled.asm["cubin"])
        usage = RESOURCE.search(_run_tool("cuobjdump", "-res-usage", cubin))
        sass = _run_tool("cuobjdump", "-sass", cubin)
    registers, stack, static_shared, local = (int(v) for v in usage.groups())
    opcodes = SASS_OPCODE.findall(sass)
    bases = Counter(opcode.split(".")[0] for opcode in opcodes)
    sass_widths = {kind: Counter(sass_width(op) for op in opcodes if op.startswith(prefix))
                   for kind, prefix in (("load", "LDG"), ("store", "STG"))}  # fmt: skip
    tiles = tile_parameters(compiled.asm["ttgir"])
    ptx_widths = {"load": Counter(), "store": Counter()}
    tile_widths: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for kind, width, parameter in ptx_accesses(compiled.asm["ptx"]):
        ptx_widths[kind][width] += 1
        if parameter in tiles:
            tile_widths[(parameter_names[parameter].removesuffix("_ptr"), kind)][width] += 1
    spilling = bool(bases["STL"] or stack or local)
    return {
        "num_warps": compiled.metadata.num_warps,
        "registers": registers,
        "register_limit": register_limit(compiled.metadata.num_warps),
        "stack_bytes": stack,
        "local_bytes": local,
        "spill_stores": bases["STL"],
        "spill_bytes_at_o1": spill_bytes_at_o1(compiled.asm["ptx"], capability) if spilling else 0,
        "spill_loads": bases["LDL"],
        "shared_bytes": max(compiled.metadata.shared, static_shared),
        "tile_accesses": [
            {"tensor": name, "kind": kind, "widths": _widths(count)}
            for (name, kind), count in sorted(tile_widths.items())
        ],
        "sass_widths": {kind: _widths(count) for kind, count in sass_widths.items()},
        "sass_agrees": all(set(sass_widths[k]) == set(ptx_widths[k]) for k in sass_widths),
    }


def specialisation_text(decided: dict[str, Any]) -> str:
    """The binder's decision in words: each argument's type, 16-byte divisibility and constants."""
    parts = []
    attrs = {path[0]: value for path, value in decided["attrs"].items() if len(path) == 1}
    for index, (name, kind) in enumerate(decided["signature"].items()):
        if kind == "constexpr":
            parts.append(f"{name}={decided['constexprs'].get((index,))}")
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
        seconds = round(time.perf_counter() - started, 3)
        parameters = [name for name, kind in decided["signature"].items() if kind != "constexpr"]
        return {"status": "ok", "compile_s": seconds, "specialisation": specialisation_text(decided),
                **inspect(compiled, parameters, task["capability"])}  # fmt: skip
    except Exception as error:  # a compile error is a result, not the end of the worker
        lines = traceback.format_exception_only(type(error), error)
        return {"status": "error", "error": "".join(lines).strip()[-2000:]}


def main() -> None:
    """Answer every task line on stdin with a result line on stdout, in order."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the compiler prints must not mix with the results
    hello = {"triton": triton.__version__, "triton_path": str(Path(triton.__file__).parent)}
    out.write(json.dumps(hello) + "\n")  # before any task is read: the parent waits for it
    out.flush()
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(compile_task(json.loads(line))) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
