# One image for every vterm process; docker-compose.yml and the Helm chart pick the command.

# The terminal page's xterm.js, from the npm registry at the versions package-lock.json pins
# (the same `npm run vendor` as `make vendor`).
FROM node:20-slim AS vendor
WORKDIR /build
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error && npm run --silent vendor

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VTERM_DATA_DIR=/var/lib/vterm

# tmux hosts the sessions, bubblewrap sandboxes them (docs/security.md). tini runs as PID 1: it
# forwards signals to the process and reaps the orphaned children that shells leave behind, which
# a Python PID 1 would not.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tmux tini bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# The web, beat and Flower run as this unprivileged user (the Helm chart's uid 1000). Backends
# run as root, which their sandboxes need; each user's shells run as a uid of their own.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash vterm \
    && install -d -o vterm -g vterm /var/lib/vterm

WORKDIR /app
COPY . .
COPY --from=vendor /build/sessions/static/vendor/ sessions/static/vendor/
RUN pip install . \
    && chmod 0755 deploy/docker-entrypoint.sh

USER vterm
EXPOSE 8000 5555

ENTRYPOINT ["/usr/bin/tini", "--", "/app/deploy/docker-entrypoint.sh"]
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "vterm_project.asgi:application"]
