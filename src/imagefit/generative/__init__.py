"""Synthetic training images: `generate` (the class-conditional diffusion model, its sampler and diffuse-and-denoise
variations), `gan` (the class-conditional DCGAN) and `quality` (FID, KID, IS and the classification accuracy score).

May import: the bottom modules, data, training (CAS trains a classifier) and evaluation.
"""
