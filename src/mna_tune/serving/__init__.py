"""Using a registered version: `ask`, `export`, the pyfunc model and `serve`.

serve: server.py (the command) -> app.py (routes, names, limits) -> protocol.py (the request,
OpenAI errors, the reply) and guard.py (body size, time, nesting) -> jobs.py (what generates:
transformers in-process, or the vLLM engine behind engine_server.py).
"""
