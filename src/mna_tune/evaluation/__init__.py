"""The evaluate stage: generation, Korean metrics, the LLM judge and the report."""
