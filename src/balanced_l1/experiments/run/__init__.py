"""One run of a comparison: train, checkpoint, evaluate and record one (arm, seed), in this or a worker process."""
