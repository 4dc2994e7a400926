"""The hot pieces of the NeRF pipeline, each as a CUDA source, its PyTorch twin and a backend switch.

    compositing   volume rendering of packed samples (NeRF Eq. 3), forward and closed-form backward
    sampling      inverse-CDF (hierarchical) sampling of the coarse weights (NeRF Sec. 5.2)
    backend       choosing torch / cuda / emulated and launching kernels/<module>.cu

Importing this package compiles nothing: a kernel is built the first time a cuda or emulated backend runs it.
"""
from kernels.compositing import composite, composite_torch, ray_indices_from_counts, starts_from_counts
from kernels.sampling import sample_pdf, sample_pdf_torch

__all__ = ["composite", "composite_torch", "ray_indices_from_counts", "sample_pdf", "sample_pdf_torch",
           "starts_from_counts"]
