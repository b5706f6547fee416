"""Compression: LUT quantizers (lut*, gptq, calibrate), the format registry (formats), packed artifacts
(artifact), the modules that compute with packed weights (modules), the transformers quantizer (hf_quantizer),
the quantize pipeline (quantize) and exporters (gptq_export). Submodules are imported on demand."""
