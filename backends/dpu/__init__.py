"""The DPU backend: an int8 dense CNN engine in the style of DeePhi's DPU (see docs/dpu.md)."""
