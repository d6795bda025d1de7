"""Data: the embedded demo corpus (`corpus`, `demo`), the demo task's gold judge (`gold`) and preference formats
(`preferences`). Import the submodules directly; this package imports nothing heavy on its own."""
