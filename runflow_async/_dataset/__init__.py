"""Datasets: inputs, the journal, output folders and the pipeline that drives the engine."""
