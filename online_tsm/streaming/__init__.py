"""From per-frame logits to what a viewer sees: the pace a model was trained at and the smoothing of its predictions."""
