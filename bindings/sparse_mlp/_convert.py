"""Argument conversion shared by every module of the package (the bottom
layer: it imports nothing of sparse_mlp): tensors and arrays checked and
viewed for the native module, masks, token matrices, outputs, and the
sparsity -> kept-neuron count."""

import numpy as np

try:  # torch is optional: NumPy arrays work alone.
    import torch
except ImportError:  # pragma: no cover - torch is installed where tests run
    torch = None


def is_torch(x):
    return torch is not None and isinstance(x, torch.Tensor)


MASK_RULES = """Masks, on every path of this package: a torch.Tensor or
numpy.ndarray on the CPU, of dtype bool or uint8 (any non-zero uint8 is
active; floats and other integer types raise TypeError rather than being
guessed at), shaped ``[I]`` or ``[tokens, I]`` (the union over the tokens);
a ``[0, I]`` mask (no tokens) raises ValueError rather than meaning the
empty mask."""


def check_mask(mask):
    """Validates ``mask`` against :data:`MASK_RULES` and returns it."""
    if not (is_torch(mask) or isinstance(mask, np.ndarray)):
        raise TypeError(
            f"mask must be a torch.Tensor or numpy.ndarray, got {type(mask).__name__}")
    if mask.ndim not in (1, 2):
        raise ValueError(
            f"mask must be 1-D [I] or 2-D [tokens, I], got {mask.ndim} dimensions")
    if is_torch(mask):
        if mask.device.type != "cpu":
            raise ValueError(f"mask must be on the CPU, got device {mask.device}")
        if mask.dtype not in (torch.bool, torch.uint8):
            raise TypeError(f"mask must be bool or uint8, got {mask.dtype}")
    elif mask.dtype not in (np.bool_, np.uint8):
        raise TypeError(f"mask must be bool or uint8, got {mask.dtype}")
    if mask.ndim == 2 and mask.shape[0] == 0:
        raise ValueError(
            f"a [tokens, I] mask needs at least one token, got shape {tuple(mask.shape)}")
    return mask


def mask_array(mask):
    """A checked mask as a C-contiguous NumPy array (masks are read once;
    copying a non-contiguous one is cheap and changes nothing the caller
    holds)."""
    check_mask(mask)
    if is_torch(mask):
        return np.ascontiguousarray(mask.detach().numpy())
    return np.ascontiguousarray(mask)


def weight(x, name):
    """A weight ready for the native module, never copied: torch tensors
    must be on the CPU (a meta or CUDA tensor is refused here with a clear
    message) and are detached (a view) because DLPack refuses tensors that
    require grad; NumPy arrays go through the buffer protocol, read-only ones
    (``np.load(path, mmap_mode="r")``) included. Contiguity and dtype are
    checked by the native module."""
    if x is None:
        return None
    if is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got device {x.device}")
        return x.detach()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(
        f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def contiguous(t):
    return t.is_contiguous() if is_torch(t) else t.flags.c_contiguous


def tokens(x, hidden_size, name="x"):
    """``x`` as a 2-D ``[tokens, H]`` view (``[H]`` becomes ``[1, H]``, never
    a copy) and a new output of x's shape, type and kind (torch or NumPy)."""
    if is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got device {x.device}")
        x = x.detach()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim not in (1, 2):
        raise ValueError(f"{name} must be [H] or [tokens, H], got shape {tuple(x.shape)}")
    if x.shape[-1] != hidden_size:
        raise ValueError(
            f"{name} must be [{hidden_size}] or [tokens, {hidden_size}], got shape {tuple(x.shape)}")
    if not contiguous(x):
        raise ValueError(f"{name} must be C-contiguous: the forward does not copy silently")
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    out = torch.empty_like(x2) if is_torch(x2) else np.empty_like(x2)
    return x2, out


def result(out, x):
    return out.reshape(x.shape)


def out_matrix(out, x2):
    """``out`` (x's shape, [H] or [tokens, H]) as the 2-D view the native
    module writes (shape and type are checked there)."""
    if not (is_torch(out) or isinstance(out, np.ndarray)):
        raise TypeError(f"out must be a torch.Tensor or numpy.ndarray, got {type(out).__name__}")
    if not contiguous(out):
        raise ValueError("out must be C-contiguous (it is written in place)")
    if out.ndim == 1:
        out = out.reshape(1, -1)
    if tuple(out.shape) != tuple(x2.shape):
        raise ValueError(f"out must have x's shape, got {tuple(out.shape)}")
    return out


def keep_count(sparsity, intermediate_size):
    """Neurons kept per token at ``sparsity`` (fraction inactive, in [0, 1)):
    round((1 - sparsity) x I), at least 1."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number, got {type(sparsity).__name__}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return max(1, round((1.0 - sparsity) * intermediate_size))
