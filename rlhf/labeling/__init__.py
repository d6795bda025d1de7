"""Preference collection: the store (`store`), web app (`app`, `security`, templates/, static/), simulated
labelers (`simulate`), agreement metrics (`agreement`), import/export (`importer`, `export`) and the
`rlhf label` command (`cli`). See docs/labeling.md. Import the submodules directly; this package imports
nothing on its own."""
