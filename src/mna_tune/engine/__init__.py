"""vLLM as a child process in its own virtualenv, spoken to over the OpenAI API on 127.0.0.1."""
