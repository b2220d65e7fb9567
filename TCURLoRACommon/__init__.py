"""Qt-free code shared by the TCURFineTune and TCURSegmenter modules: scene IO, jobs, worker, curves."""
