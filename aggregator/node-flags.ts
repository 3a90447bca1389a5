/**
 * Node.js (V8) flags the aggregator runs with: `node <flags> dist/cli/main.js aggregator ...`.
 * The systemd unit (systemd/fedline-aggregator.service), the demo and the benchmarks start it with
 * these; test/systemd.test.ts checks the unit against this list.
 *
 * None today. Until the receive path borrowed its packets (shared/transport/borrowing-stream.ts),
 * the aggregator ran with --initial-old-space-size=96: MQTT.js allocated about two bytes of
 * Buffers per byte received, V8 counted them against the old generation's limit, and a major GC
 * started every few MiB of an upload (a third of the receiver's CPU). With no Buffer per packet
 * that cause is gone, and the floor only let promoted garbage pile up (no major GC below 96 MiB):
 * without it the aggregator's peak RSS is lower at 10 and at 300 sites and grows less between
 * them, and the receiver's CPU per GB stays within its goal (docs/scaling.md, "Dropping the
 * old-space floor"). A flag added here must come with such a measurement.
 */
export const AGGREGATOR_NODE_FLAGS: readonly string[] = [];
