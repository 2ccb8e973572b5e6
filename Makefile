# natkit: `make run` and `make test` work on a fresh machine (they install what they need first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the lab, the coturn engine, the interop tests, the cluster tests (redis-server),
# the packaging test (systemd-analyze) and the browser check page's tests (chromium) need
# (installed when root).
APT_PACKAGES := iproute2 nftables conntrack coturn clang libbpf-dev ethtool redis-server systemd chromium tayga unbound iptables miniupnpd-nftables
CONFIG ?= configs/natkit.yaml

.PHONY: install system-packages run test test-fast lint bench demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@$(BIN)/python -c 'import natkit.fastpath.build as b; raise SystemExit(b.main())'  # BPF object
	@$(BIN)/python -c 'import natkit.turn.pump as p; raise SystemExit(p.main())'  # relay pump
	@touch $@

system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "note: not root; skipping Debian packages ($(APT_PACKAGES)); lab and coturn tests will skip"; \
	fi

# The default config runs the builtin TURN relay with a REST API secret from $$NATKIT_TURN_SECRET;
# when unset, `make run` keeps a random one in .natkit/turn-secret (mode 0600, gitignored).
SECRET_FILE := .natkit/turn-secret

run: install $(SECRET_FILE)
	@echo "health check (in another terminal): $(BIN)/natkit turn check turn:127.0.0.1:3478 --secret \"\$$(cat $(SECRET_FILE))\""
	@echo "TURN credentials: NATKIT_TURN_SECRET=\$$(cat $(SECRET_FILE)) $(BIN)/natkit turn credentials --user alice --json"
	@# exec: the shell gives way to natkit, so the SIGTERM make forwards to its child reaches it
	NATKIT_TURN_SECRET="$${NATKIT_TURN_SECRET:-$$(cat $(SECRET_FILE))}" exec $(BIN)/natkit serve -c $(CONFIG)

$(SECRET_FILE):
	@mkdir -p $(dir $@)
	@umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > $@

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check natkit tests bench
	$(BIN)/ruff format --check natkit tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

# The NAT matrix: every pair of NAT types, direct and through TURN (network namespaces: root).
demo: install
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "make demo needs root (it builds network namespaces): sudo make demo" >&2; exit 2; \
	fi
	$(BIN)/natkit lab matrix

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
