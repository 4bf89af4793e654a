"""Training stages (mux warm-up, GLUE fine-tuning, CoFi pruning) are tracked in issue 5 and not built yet."""
