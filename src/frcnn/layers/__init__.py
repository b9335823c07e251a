"""Kernels and small ops with no model logic: RoIAlign / crop-and-resize on the CPU
(``roi_align``), BatchNorm freezing, folding and calibration (``batchnorm``), and the inference
rewrite of a trained network (``inference_rewrite``). Nothing here imports ``frcnn.modeling``."""
