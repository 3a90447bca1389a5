import { createServer } from 'node:net';

/** A free TCP port on `host` (tests, benchmarks and the demo: node-opcua and Mosquitto need a concrete port). */
export function freeTcpPort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolvePort(port));
    });
  });
}
