"""Qt-free logic of the TCURSegmenter module: which volumes, which adapted model, the segmentation run."""
