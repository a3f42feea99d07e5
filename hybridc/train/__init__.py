"""Training a compiled model: the experiment config (`experiment`), building the model from it (`build`),
the loop (`loop.Trainer`, `loop.train`), the run directory it owns (`run_dir`, `run_lock`, `resume`,
`saved_run`, `checkpoint`), what it prints (`console`), interrupts, metrics, optimizers and DDP."""
