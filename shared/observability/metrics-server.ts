import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Registry, type CounterConfiguration } from 'prom-client';
import { ErrorCodes, FedlineError } from '../protocol/errors.js';
import type { Logger } from '../util/logger.js';

/**
 * Prometheus metrics (`GET /metrics`) and a health check (`GET /healthz`) for a service, on a small
 * HTTP listener of its own. Off unless the service's config has `metrics: { port }`; bound to
 * loopback (127.0.0.1) unless `metrics.host` says otherwise. Each service registers its own metrics
 * (docs/metrics.md lists every name) in the registry it gets from `createMetricsRegistry`.
 */

export interface MetricsConfig {
  /** TCP port; 0 picks a free one (the service logs and reports it). */
  port: number;
  /** Address to listen on. Default 127.0.0.1: exposing it to the plant network is a decision. */
  host: string;
}

export interface Health {
  ok: boolean;
  [key: string]: unknown;
}

export interface MetricsServer {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/** A registry with prom-client's default process and Node.js metrics (process_*, nodejs_*) and a `service` label. */
export function createMetricsRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  return registry;
}

/**
 * A counter whose value is read at scrape time from a running total the service keeps anyway
 * (bytes sent, error counters): the service's code needs no metric calls.
 */
export function totalCounter<L extends string>(
  config: Omit<CounterConfiguration<L>, 'collect'>,
  read: () => Iterable<[Partial<Record<L, string>>, number]>,
): Counter<L> {
  return new Counter<L>({
    ...config,
    collect() {
      this.reset();
      for (const [labels, value] of read()) if (value > 0) this.inc(labels, value);
    },
  });
}

/** Serve `registry` on /metrics and `health()` on /healthz (200 when ok, else 503). */
export async function startMetricsServer(config: MetricsConfig, registry: Registry, health: () => Health, log: Logger): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      registry
        .metrics()
        .then((text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text))
        .catch((err: Error) => {
          log.warn({ err: err.message }, 'could not collect metrics');
          res.writeHead(500).end();
        });
      return;
    }
    if (path === '/healthz') {
      let h: Health;
      try {
        h = health();
      } catch (err) {
        h = { ok: false, error: (err as Error).message };
      }
      res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: h.ok ? 'ok' : 'unhealthy', ...h }) + '\n');
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics or /healthz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new FedlineError(ErrorCodes.CONFIG_INVALID, `metrics: cannot listen on ${config.host}:${config.port}: ${err.message}`, { ...config })),
    );
    server.listen(config.port, config.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  log.info({ module: 'metrics', url }, 'metrics on /metrics, health on /healthz');
  return {
    url,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
