"""One module per job kind: each ``run(ctx) -> JobOutput`` loads inputs, calls ``spottune.ml``."""
