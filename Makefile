# The two commands: `make up` starts the whole stack on 127.0.0.1:8080, `make test` runs every suite.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
export UV_LINK_MODE ?= copy

.PHONY: up test install deps bench bench-media catalog lint compose-config clean

deps:
	@bash scripts/install-deps.sh

install: deps
	@$(UV) sync --all-packages --frozen --quiet

up: install
	$(UV) run --frozen python -m stack.launcher up $(ARGS)

test: install
	$(UV) run --frozen pytest $(ARGS)

bench: install
	$(UV) run --frozen python -m bench $(ARGS)

bench-media: install
	$(UV) run --frozen python -m bench.media $(ARGS)

catalog: install
	$(UV) run --frozen python -m chassis.catalog profile_svc.events post_svc.events chat_svc.events call_svc.events > docs/event-catalog.json

lint: install
	$(UV) run --frozen ruff check .

clean:
	rm -rf .data
