"""Qt-free logic of the TCURFineTune module: training cases from the scene, the fine-tuning run."""
