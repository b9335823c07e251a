"""This model and torchvision's detection models: one key table both ways (``torchvision_keys``),
checkpoints in (``torchvision_import``, the ``init_from`` option) and a torchvision twin of a built
model out (``torchvision_twin``), for parity tests and side-by-side benchmarks."""
