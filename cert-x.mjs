const R='/work/wt/i13-alerts/dist';
const { startPlcSimulator } = await import(R+'/demo/plc-simulator.js');
const opcua = (await import('node-opcua')).default ?? await import('node-opcua');
const { mkdtempSync, readdirSync } = await import('node:fs');
const dir = mkdtempSync('/tmp/i13x/run-');
const sim = await startPlcSimulator({ port: 48500 + Math.floor(Math.random()*100), pkiDir: dir+'/sim', initialState: 'Idle', trustUnknownClients: process.argv[2]==='plc' });
const cm = new opcua.OPCUACertificateManager({ rootFolder: dir+'/pki', automaticallyAcceptUnknownCertificate: process.argv[2]==='plc' });
const client = opcua.OPCUAClient.create({ endpointMustExist:false, securityMode: opcua.MessageSecurityMode.SignAndEncrypt, securityPolicy: opcua.SecurityPolicy.Basic256Sha256, connectionStrategy:{maxRetry:0}, clientCertificateManager: cm });
try { await client.connect(sim.endpoint); console.log('connected'); } catch (e) { console.log('ERR', JSON.stringify(e.message)); }
console.log('serverCert', client.serverCertificate?.length, Array.isArray(client.serverCertificate), 'certfile', client.certificateFile);
if (client.serverCertificate) console.log(await cm.isCertificateTrusted(client.serverCertificate));
await client.disconnect(); await sim.close(); await cm.dispose(); process.exit(0);
