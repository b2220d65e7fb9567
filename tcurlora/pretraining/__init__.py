"""Pretrain a base model from scratch on several labeled datasets with different label sets.

Design (one head over the union of labels): every source dataset's classes get their own global
indices (acdc 1-3, brats2013 4-7 in the shipped recipe). Each training batch is drawn from one
source (round robin). The loss is cross-entropy over the whole union softmax plus a soft Dice over
background and that source's own classes. Cross-entropy over the whole union is correct here
because the sources' label sets are anatomically exclusive (a voxel of a cardiac MRI is never a
brain tumour), so "not one of this dataset's classes" means background; the Dice term, which is
undefined for classes a batch can never contain, is restricted to the source's own classes.

The recipe is a JSON file (configs/pretrain/*.json), seeded; the result is a model folder
(model.json with the model card inside "card", model.safetensors) plus training_log.jsonl.

One job per module: config (the recipe, its label union and network), data (preprocessed volumes and
their disk cache, cache), sampling (MONAI patch transforms, seeded from one Generator), contrast and
tissue (the self-supervised objective's random MRI contrast and intensity classes), loss, evaluation,
card (the model card), hooks (what happens after each step of the shared loop) and run (train, resume,
finish). The schedule, step, loop and checkpoint format are tcurlora.training's, shared with fine-tuning.

Under torchrun the calls marked "torchrun" split each global batch over the ranks, pool the batch-wide
Dice, average the gradients (DDP) and the logged loss, split the held-out evaluation and let rank 0
alone write; without torchrun they are no-ops.
"""
