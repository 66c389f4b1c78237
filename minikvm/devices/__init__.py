"""Device models: what a guest finds at port-I/O and MMIO addresses."""
