"""End-to-end examples that use flashgen the way a model would (`python -m flashgen.demos.gpt`)."""
