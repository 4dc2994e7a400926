"""The hot pieces of the NeRF pipeline, each as a CUDA source, its PyTorch twin and a backend switch.

    compositing    volume rendering of packed samples (NeRF Eq. 3), forward and closed-form backward
    sampling       inverse-CDF (hierarchical) sampling of the coarse weights (NeRF Sec. 5.2)
    hash_encoding  the multiresolution hash encoding of Instant-NGP (Sec. 3, Eq. 2-4), forward and backward
    ray_marching   occupancy-grid ray marching and the grid's maintenance (Instant-NGP Sec. 5.4, Appendix E)
    distortion_loss  mip-NeRF 360's distortion loss (Eq. 15) in linear time, forward and backward
    backend        choosing torch / cuda / emulated and launching kernels/<module>.cu

Each module is imported by name (``from kernels.ray_marching import march_rays``); the package re-exports the
compositing and sampling functions. Importing this package compiles nothing: a kernel is built the first time a
cuda or emulated backend runs it.
"""
from kernels.compositing import composite, composite_torch, ray_indices_from_counts, starts_from_counts
from kernels.sampling import sample_pdf, sample_pdf_torch

__all__ = ["composite", "composite_torch", "ray_indices_from_counts", "sample_pdf", "sample_pdf_torch",
           "starts_from_counts"]
