"""The judge's worker: runs a student's functions on inputs the grader chose and writes back plain arrays.

    python worker.py REQUEST_DIR OUT_DIR FIRST_CALL

This file runs INSIDE the sandbox (course/sandbox.py), in the same interpreter as the student's code, so nothing it
does is trusted: the student's code can rewrite this module, torch, numpy or the output files. That is fine by
design. The worker decides no grade. It only computes: for each call of REQUEST_DIR/request.json from FIRST_CALL on,
it imports the student's module, calls the function on the inputs of REQUEST_DIR/inputs.npz and writes
OUT_DIR/<index>.npz (the outputs as numpy arrays, and the gradients the call asks for) or OUT_DIR/<index>.json
(`{"error": "<one line>"}`). The grader reads the .npz with `allow_pickle=False` (arrays of numbers, nothing with
behaviour) and compares them, in its own process, with what the solution computes on the same inputs. Whatever the
student's code writes here, it can only write numbers that are then checked.

Stdlib, numpy and torch only: no project module is imported before the student's, so the only project code
this interpreter holds is the release's (the solution is not in the sandbox).
"""
import importlib
import json
import os
import sys


def to_array(value):
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().as_subclass(torch.Tensor).numpy().copy()
    if isinstance(value, (bool, int, float)):
        return np.asarray(value)
    raise TypeError(f"returned a {type(value).__name__} where a tensor was expected")


def flatten(value) -> dict:
    """A tensor, a tuple/list of tensors or a dict of tensors -> {key: array} ("out" for a lone tensor)."""
    if isinstance(value, (tuple, list)):
        return {str(k): to_array(item) for k, item in enumerate(value)}
    if isinstance(value, dict):
        return {str(k): to_array(item) for k, item in value.items()}
    return {"out": to_array(value)}


def run_call(call: dict, inputs) -> dict:
    import torch

    def materialise(spec):
        if isinstance(spec, dict) and "array" in spec:
            tensor = torch.from_numpy(inputs[spec["array"]].copy())
            return tensor
        if isinstance(spec, dict) and "none" in spec:
            return None
        return spec

    args = [materialise(spec) for spec in call["args"]]
    kwargs = {name: materialise(spec) for name, spec in call.get("kwargs", {}).items()}
    wrt = call.get("grad_wrt", [])  # argument positions whose gradient the grader wants
    for position in wrt:
        args[position].requires_grad_(True)
    module = importlib.import_module(call["module"])
    function = module
    for name in call["function"].split("."):
        function = getattr(function, name)
    result = function(*args, **kwargs)
    outputs = flatten(result)
    if wrt:
        tensors = result if isinstance(result, (tuple, list)) else (
            list(result.values()) if isinstance(result, dict) else [result])
        keys = list(outputs)
        loss = sum((tensor * torch.from_numpy(inputs[call["cotangent"][key]])).sum()
                   for key, tensor in zip(keys, tensors) if key in call["cotangent"])
        grads = torch.autograd.grad(loss, [args[position] for position in wrt], allow_unused=True)
        for position, grad in zip(wrt, grads):
            outputs[f"grad{position}"] = to_array(grad if grad is not None else torch.zeros_like(args[position]))
    return outputs


def main() -> None:
    request_dir, out_dir, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import numpy as np
    import torch

    torch.set_num_threads(1)
    open(os.path.join(out_dir, "ready"), "w").close()  # the grader starts the first part's clock here
    with open(os.path.join(request_dir, "request.json")) as handle:
        calls = json.load(handle)["calls"]
    inputs = np.load(os.path.join(request_dir, "inputs.npz"), allow_pickle=False)
    inputs = {key: inputs[key] for key in inputs.files}
    for call in calls[first:]:
        index = call["index"]
        try:
            outputs = run_call(call, inputs)
            np.savez(os.path.join(out_dir, f"{index}.tmp.npz"), **outputs)
            os.replace(os.path.join(out_dir, f"{index}.tmp.npz"), os.path.join(out_dir, f"{index}.npz"))
        except Exception as error:  # the student's exception is this call's feedback, the next call still runs
            text = " ".join(f"{type(error).__name__}: {error}".split())[:500]
            with open(os.path.join(out_dir, f"{index}.json"), "w") as handle:
                json.dump({"error": text}, handle)


if __name__ == "__main__":
    main()
