"""mna-tune: a DVC + MLflow pipeline that adapts Qwen3 to Korean M&A, finance and law QA."""

__version__ = "0.1.0"
