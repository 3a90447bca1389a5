/**
 * Node.js (V8) flags the aggregator runs with: `node <flags> dist/cli/main.js aggregator ...`.
 * The systemd unit (systemd/fedline-aggregator.service), the demo and the benchmarks start it with
 * these; test/systemd.test.ts checks the unit against this list.
 *
 * --initial-old-space-size=96 (MiB): V8 counts the Buffers MQTT.js allocates for every packet
 * (a socket read and a copy of each 256 KiB chunk: about two bytes allocated per byte received)
 * against the old generation's allocation limit. After a model has been published, V8 sets that
 * limit only ~24 MiB above the aggregator's ~21 MiB of live heap, so while an update arrived a
 * major GC (marking the whole heap) started every few MiB received: 33 in one 558 MB upload, a
 * third of the aggregator's CPU up to its ack, and more or fewer from run to run with the GC
 * timing (docs/scaling.md, "The aggregator's receiver: CPU per GB up to the ack"). A floor of 96
 * MiB on that limit leaves the Buffers to the young-generation collections that free them anyway.
 * Cost: the heap may hold up to 96 MiB before a major GC, instead of ~45.
 */
export const AGGREGATOR_NODE_FLAGS: readonly string[] = ['--initial-old-space-size=96'];
