"""Federated adaptation on NVIDIA FLARE: sites that cannot share scans adapt one model together.

Each site runs our normal fine-tuning for a few local steps from the global adapter and sends back only
its trained tensors and its case count (`learner.py`); the server averages them weighted by case count
with FLARE's FedAvg (`server.py`) and writes the global adapter as a normal adapter folder after every
round (`persistor.py`). `job.py` builds the FLARE job (simulator run or exported job folder); `checks.py`
refuses sites that cannot join (another base, other labels, another spacing) before round 1.
"""
