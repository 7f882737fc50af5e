"""Arrival tickets: how the last program of a channel block learns that all its splits are done.

On the split path every program of a channel block stores its partial summary, then takes a ticket
from the channel block's counter (an atomic add). The program that draws the last ticket (the count
of splits minus one) knows that every other split's partials are stored; it merges them in fixed
split order, so the result does not depend on which program happened to arrive last, and resets the
counter to zero. That saves the separate finalize launch, and needs no atomics on the results.

Memory ordering (what ``last_to_arrive`` does, and what the compiler makes of it; the PTX of both
ticketed kernels for sm_80 and sm_90 is checked in tests/kernels/test_tickets.py):

- every thread of a program stores its share of the partials (plain ``st.global``);
- ``tl.debug_barrier()`` (``bar.sync 0``) orders all of those stores, at CTA scope, before what
  thread 0 does next (Triton 3.9 puts a barrier of its own before a scalar atomic too; this one
  does not depend on that);
- thread 0 alone adds 1 to the counter: ``@p atom.global.gpu.acq_rel.add.u32``. Its release half
  publishes, at GPU scope, the program's partials: its own stores and, release being cumulative,
  the stores of the other threads that the barrier ordered before it. Its acquire half makes the
  partials that earlier programs published this way visible to this one;
- Triton hands the ticket to the other threads through shared memory behind another ``bar.sync``,
  so every load of the last program's merge comes after the acquire;
- those loads use the ``.cg`` cache modifier (``ld.global.cg``: L2, not L1): no line of the
  partial buffer cached earlier in this SM's L1 (another channel block's merge reads the
  neighbouring channels) can be read stale, whatever the L1 does on an acquire.
Triton's interpreter runs a launch's programs one after another, so there the ticket is just a
count. The cost on a GPU: a barrier and one atomic per program, the atomics of a channel block on
one L2 address (a few hundred at most, spread over the launch).

Where the counters live. A buffer per call would need zeroing, a memset on the GPU per call (the
very launch this saves). Instead each counter is left at zero by the program that drew the last
ticket, so one zeroed buffer serves every launch that follows it in order. Launches are ordered
within a CUDA stream only (fusedbn launches no programmatic dependent launches), so the buffers are
cached per (device, current stream): calls on two streams at once use two buffers. On the CPU
(Triton's interpreter) the calling thread plays the stream's part. During CUDA graph capture a call
gets a fresh zeroed buffer of its own, whose zeroing is captured with it (one small memset node per
ticketed kernel in the graph): a cached buffer would be shared by every graph captured on that
stream, and graphs replayed on two streams at once would mix their tickets. A launch that raises (an
interpreted one can stop between programs) drops its buffer from the cache, so no counter is left
half counted for the next call; on a GPU a launch that raises never ran, and a kernel that faults
ends the CUDA context.
"""

import threading
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from fusedbn.kernels.launcher import launching_for_the_compiler


@triton.jit
def last_to_arrive(counter_ptr, arrivals):
    """True in the one program, of the ``arrivals`` sharing ``counter_ptr``, that arrives last.

    Call it after storing what the last program must read; the last program resets the counter.
    """
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    last = ticket == arrivals - 1
    if last:
        tl.store(counter_ptr, 0)
    return last


# Most queues ((device, stream) or thread) whose counters are kept; the oldest is dropped first.
MAX_QUEUES = 64
# Counters per buffer, at least (4 bytes each): a buffer serves launches of up to this many blocks.
MIN_COUNTERS = 256

_counters: dict[tuple[int, int] | int, Tensor] = {}
_counters_changing = threading.Lock()  # held while a buffer is added or evicted


def _queue(device: torch.device) -> tuple[int, int] | int | None:
    """What orders launches on ``device`` here: (device index, current CUDA stream), or the calling
    thread's id on the CPU. None while the current stream is capturing a CUDA graph, and while the
    launches go to torch's compiler (its program allocates and zeroes the counters itself)."""
    if launching_for_the_compiler():
        return None
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return None
        # What Triton's driver reads for the launch stream, without building a torch.cuda.Stream.
        return device.index, torch._C._cuda_getCurrentRawStream(device.index)
    return threading.get_ident()


def arrival_counters(device: torch.device, count: int) -> Tensor:
    """At least ``count`` int32 ticket counters, all zero, for the next launch on ``device``'s
    current stream (on the CPU: from the calling thread). The launch must leave them at zero."""
    key = _queue(device)
    counters = None if key is None else _counters.get(key)
    if counters is None or counters.numel() < count:
        counters = torch.zeros(
            max(MIN_COUNTERS, 1 << (count - 1).bit_length()), dtype=torch.int32, device=device
        )
        if key is not None:
            with _counters_changing:
                _counters.pop(key, None)
                if len(_counters) >= MAX_QUEUES:
                    # Safe while a launch on that stream still uses it: the caching allocator
                    # hands its memory out again on that stream only, after the launch.
                    del _counters[next(iter(_counters))]
                _counters[key] = counters
    return counters


def launch_with_arrivals(
    launch: Callable[..., None], grid: tuple[int, int], device: torch.device, *args: Any, **kwargs: Any
) -> None:
    """``launch(grid, arrivals, *args, **kwargs)`` with arrival_counters(device, grid[0]): one ticket
    counter per channel block. If the launch raises, its counters are dropped, never reused."""
    arrivals = arrival_counters(device, grid[0])
    try:
        launch(grid, arrivals, *args, **kwargs)
    except BaseException:
        key = _queue(device)
        with _counters_changing:
            if key is not None and _counters.get(key) is arrivals:
                del _counters[key]
        raise
