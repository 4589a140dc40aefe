"""Downstream tasks, one module each: classify (inference), zero_shot, cls_retrieval, linear_probe,
segmentation, evaluation (pretraining retrieval / embeddings) and visualize (attention evidence).

A task never imports another task: what two tasks share lives a layer down (engines, data, metrics).
"""
