"""Accelerator backends (EIE, DPU): each a folder with isa, lower, asm, encode and sim."""
