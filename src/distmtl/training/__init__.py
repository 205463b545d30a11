"""Training: the experiment built from a config, the LightningModule, the run loop, curves and
checkpoint scoring."""
