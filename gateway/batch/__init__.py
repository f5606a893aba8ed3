"""The OpenAI Batch API's execution: validation, the runner, and where lines run."""
