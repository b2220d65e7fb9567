"""tcurlora: tensor-CUR low-rank adaptation of pretrained 3D segmentation networks."""

__version__ = "0.1.0"
