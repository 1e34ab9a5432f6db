# Shortcuts; each target is one script in scripts/ that sets up its own virtual environment.
.PHONY: demo test lint protos bench

demo:
	./scripts/demo

test:
	./scripts/test

lint:
	./scripts/lint

protos:
	./scripts/protos

bench:
	./scripts/bench
