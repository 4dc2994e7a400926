"""Runs that survive running out of GPU memory: a smaller batch or render chunk instead of a traceback.

GPU memory is the commonest complaint after installation in every NeRF code base (instant-ngp #36, nerfstudio
#3292, multinerf's 58.8 GB allocation): a batch or a render chunk sized for one card does not fit on another,
and the run dies with a CUDA out-of-memory traceback, minutes or hours in. Here:

  * training (common.training.TrainingRun.train_step): an out-of-memory error during a step halves the rays
    per step (--batch_rays, 04's adaptive ray count, and 04's --samples_per_batch, which sizes its step), says
    so in one warning line, frees what it can and runs the step again. The halved values go into config.json,
    log.csv and the checkpoints, so that --resume goes on with them instead of running out of memory again;
  * rendering (`render_retrying`, used by common.evaluation.render_view and 02's view renderer): an
    out-of-memory error while rendering a view halves the render chunk (--chunk) and renders the view again;
    the smaller chunk stays for the rest of the run and is written to metrics.json;
  * once the size is down to SMALLEST_RAYS (or the configured value, if smaller) a further out-of-memory error
    stops the run with one line naming the setting to lower (exit status 2); the checkpoints are kept.

The errors caught are torch.cuda.OutOfMemoryError and, where CuPy is loaded (the CUDA kernels of kernels/),
cupy.cuda.memory.OutOfMemoryError. Nothing else is caught: any other error is a bug or a user error and
propagates as before.
"""
from __future__ import annotations

import gc
import sys

import torch

from common.errors import UserError, warn

# Halving stops at this many rays (per training step, or per render chunk). Below it the memory in use is the
# model's own (weights, optimizer state, hash tables, occupancy grid), not the batch's, so halving again would
# not help, and 04 never marches fewer rays than this anyway (its ray count moves in multiples of 128). A
# configured value below it is the floor itself.
SMALLEST_RAYS = 128


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the GPU ran out of memory": torch's, and CuPy's when CuPy is loaded (a
    CuPy error can only come from CuPy code, so a process that never imported cupy needs no import here)."""
    errors: list[type[BaseException]] = [torch.cuda.OutOfMemoryError]
    cupy = sys.modules.get("cupy")
    cupy_error = getattr(getattr(getattr(cupy, "cuda", None), "memory", None), "OutOfMemoryError", None)
    if isinstance(cupy_error, type) and issubclass(cupy_error, BaseException):
        errors.append(cupy_error)
    return tuple(errors)


def free_memory(optimizer: torch.optim.Optimizer | None = None) -> None:
    """Give back what a failed step held: the optimizer's gradients (set to None, as zero_grad does), the
    tensors only the dead step referenced (collected), and the blocks PyTorch's and CuPy's caching allocators
    keep for reuse (returned to the driver, so that the retry starts from an unfragmented pool).
    Call it after leaving the `except` block: the exception's traceback holds the failed step's frames, and
    with them its activations, until then."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:  # CuPy without a usable device: nothing of ours is in its pool
            pass


def smallest(configured: int) -> int:
    """The size halving stops at: SMALLEST_RAYS, or the configured size if that is already smaller."""
    return min(SMALLEST_RAYS, int(configured))


def error_reason(err: BaseException) -> str:
    """The first line of an out-of-memory message ("CUDA out of memory. Tried to allocate 2.00 GiB ...")."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def render_retrying(owner, render_once, what: str = "a view"):
    """render_once(chunk) with chunk = owner.chunk; on a GPU out-of-memory error, halve owner.chunk and again.

    owner: the render function whose `chunk` attribute (rays per forward pass) sizes the rendering; the halved
        value is stored there, so that every later view, video frame and held-out check of the run uses it,
        and `owner.chunk_at_start` keeps the value it had before the first halving (for metrics.json).
    render_once(chunk) -> the rendering of one view (or frame) with `chunk` rays at a time.
    what: named in the messages ("test view 3", "a video frame").
    Each halving prints one warning line. At smallest(the starting chunk) a further error raises a one-line
    UserError naming --chunk; the run's checkpoints are untouched.
    """
    while True:
        chunk = int(getattr(owner, "chunk", 4096))
        try:
            return render_once(chunk)
        except out_of_memory_errors() as err:
            reason = error_reason(err)
        free_memory()  # outside the except block: the traceback (and the failed chunk's tensors) is gone
        start = int(getattr(owner, "chunk_at_start", chunk))
        if chunk <= smallest(start):
            raise UserError(
                f"GPU out of memory rendering {what} even at {chunk} rays at a time ({reason}): lower --chunk "
                f"below {chunk} (e.g. --chunk {max(1, chunk // 4)}) or use a GPU with more memory; the checkpoints "
                f"are kept, render them with --render_only")
        halved = max(smallest(start), chunk // 2)
        owner.chunk_at_start = start
        owner.chunk = halved
        warn(f"GPU out of memory rendering {what} at {chunk} rays at a time ({reason}): rendering it again "
             f"with --chunk {halved}, kept for the rest of the run")


def views_surviving_out_of_memory(render_view_fn):
    """Wrap a per-view renderer render_view_fn(*camera) that reads its own `chunk` attribute (02's
    make_view_renderer) so that each call goes through `render_retrying`; `wrapped` is the renderer, whose
    `chunk` the halving lowers."""

    def render_view(*args, **kwargs):
        return render_retrying(render_view_fn, lambda chunk: render_view_fn(*args, **kwargs))

    render_view.wrapped = render_view_fn
    return render_view
