"""The benchmark: python -m bench [--quick]. Ceiling, decoding, /service, Gradio's API and the naive baseline."""
