"""Data: sources, the generic CSV format, the multi-source sampler, SynthFACS and named loaders."""
