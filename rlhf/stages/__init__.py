"""Pipeline stages: each a `XConfig` dataclass and a `run(cfg) -> Path`."""
