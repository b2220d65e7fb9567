"""The training layer shared by fine-tuning, pretraining, federated rounds and the bench cost runs.

step.py: one optimisation step (schedule, autocast, scaler, clipping) and its resumable state;
loop.py: the one loop, with hooks per caller; schedule.py: the one warm-up + cosine schedule;
checkpoint.py: checkpoint formats, safe reading and the checks that refuse to resume another run.
"""
