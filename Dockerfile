# Douane: build with the dev dependencies, run with production ones only, as a non-root user.
# Configuration and policies are mounted: /etc/douane/douane.yaml and /etc/douane/policies.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

FROM node:20-bookworm-slim
# openssl makes the throwaway certificate of tls.insecure_dev (a trial without a certificate of its own).
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/*
# Every douane command run in the container (quarantine, policy, accounts) reads the mounted configuration,
# not the embedded default.
ENV NODE_ENV=production DOUANE_CONFIG=/etc/douane/douane.yaml
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY douane.example.yaml ./
COPY policies ./policies
# policies/tests refer to these, so that `douane policy test` runs in the image too
COPY fixtures/messages ./fixtures/messages
RUN mkdir -p /var/spool/douane /var/lib/douane /etc/douane \
 && chown node:node /var/spool/douane /var/lib/douane
USER node
# Unprivileged ports inside the container; publish them as 587/465 (see compose.yaml).
EXPOSE 2587 2465 2525 9725
# The admin endpoint at its default address and port; with another admin.address or admin.port, set
# DOUANE_HEALTHCHECK_URL (e.g. http://10.0.0.5:9725/healthz). With admin.enabled: false, remove this.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
  CMD ["node", "-e", "fetch(process.env.DOUANE_HEALTHCHECK_URL || 'http://127.0.0.1:9725/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/cli.js"]
CMD ["serve", "--config", "/etc/douane/douane.yaml"]
