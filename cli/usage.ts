import { backendPreferences } from '../shared/config/service-config.js';

/**
 * Every command's usage, in one module that loads nothing heavy: `fedline <command> --help` prints
 * it without loading tfjs or node-opcua. The commands print the same text on a usage error.
 */

/** The process exit codes of every command (README, docs/development.md). */
export const ExitCodes = {
  /** Done. */
  OK: 0,
  /** A runtime failure: the broker, a service or an image could not do its work. */
  FAILURE: 1,
  /** A usage error: unknown command or option, a malformed or missing option value. */
  USAGE: 2,
  /** A configuration error at start-up: a config file unreadable or invalid, a folder or key it names missing. */
  CONFIG: 3,
  /** Stopped by Ctrl-C (SIGINT). SIGTERM (systemd's stop) is an orderly stop: 0. */
  INTERRUPTED: 130,
} as const;

export const EXIT_CODES_TEXT = `exit codes:
  0    done (also after SIGTERM: an orderly stop)
  1    runtime failure (a service stopped on an error, an image could not be read)
  2    usage error: unknown command or option, a malformed or missing option value
  3    configuration error at start-up: config file unreadable or invalid, a data folder or key file it names missing
  130  stopped by Ctrl-C (SIGINT)`;

export const MAIN_USAGE = `fedline: federated learning for factory quality inspection over MQTT

usage: fedline <command> [options]      fedline <command> --help      fedline --version

commands:
  demo        run a whole federation on this machine: embedded broker, aggregator and 3 agents
              as separate processes on generated images
                --rounds N (12)  --out DIR (./demo-out)  --seed N (42)  --epochs N (2)  --size PX (32)
                --model small-cnn|vgg11|vgg16|vgg19 (small-cnn)  --federate all|head (all)  --width X
                --init-from DIR  --pretrain-epochs N (VGG: 15)  --learning-rate X
                --trigger opcua  agents train only in the idle windows of a simulated PLC
                --encoding f32|f16|q8 (f32)  --delta (updates as differences to the base model)
                --strategy scaffold|fedavg|... the aggregator's strategy (scaffold; fedavg with --federate head)
                --dashboard  also serve the dashboard (a free loopback port) and print its address
  broker      run the embedded MQTT broker (Aedes)          --config FILE [--port N]
  aggregator  run the aggregator                            --config FILE
  agent       run an edge agent                             --config FILE
  plant       federate a plant's lines, take part at headquarters as one agent   --config FILE
  inspect     classify new images with the released global model, publish verdicts   --config FILE
  dashboard   a web page following the federation live, operator actions   --config FILE [--port N]
  plc-sim     a simulated PLC (OPC UA server), line state Running/Idle on a schedule
  passwd      add a user to a broker password file          --file FILE --user NAME (password on stdin)
  acl         render an access file as a Mosquitto acl_file --access FILE [--out FILE]
  classify    classify images with a stored model           --model DIR [--json] IMAGE...
  model-info  parameters and update bytes per round         [--model vgg19] [--size 224] [--head paper] [--json]
  pretrain    train a starting model on reference images    --data DIR --classes A,B,.. --out DIR [--model vgg11]
  dataset synth  write generated USB-inspection images      --out DIR [--seed N] [--size PX] [--scale X]
              (the 3 clients, an external set, cross-client probes, reference images for pretrain)
  experiment  the paper's comparison: centralized, local-only, federated all/head/random init;
              report.md, results.json, learning curves and confusion matrices as PNG
                                                            --config FILE [--out DIR] [--mode in-process|mqtt] [--seeds LIST]
  keygen      an Ed25519 key pair for signing global models --out DIR
  models      stored model versions: stage, sites' metrics, signature   --state DIR [--json]
  release     release a model version to the lines (MES command over MQTT)   VERSION --url URL --federation NAME
              [--username mes --password-file FILE] [--by NAME] [--reason TEXT]
  rollback    go back to the version released before (or VERSION)  [VERSION] (options as release)

Example configs are in examples/. Logs are JSON lines on stdout; set FEDLINE_LOG_LEVEL=debug for more.

${EXIT_CODES_TEXT}`;

const serviceUsage = (command: string, what: string, extra = '', extraLines = '') => `fedline ${command}: ${what}

usage: fedline ${command} --config FILE${extra}
  -c, --config FILE  the service's JSON config (examples/ has one for each service)${extraLines}
  -h, --help         this text
Runs until SIGINT or SIGTERM. Logs are JSON lines on stdout.

${EXIT_CODES_TEXT}`;

export const BROKER_USAGE = serviceUsage(
  'broker',
  'run the embedded MQTT broker (Aedes)',
  ' [--port N]',
  `\n  --port N           listen on this TCP port instead of the config's "port" (0 to 65535; 0 picks a free one)`,
);
export const AGGREGATOR_USAGE = serviceUsage('aggregator', 'run the aggregator: rounds, FedAvg, the global model store');
export const AGENT_USAGE = serviceUsage('agent', "run an edge agent: trains on the site's images in its training window, uploads updates");
export const PLANT_USAGE = serviceUsage(
  'plant',
  "federate the plant's lines on the plant broker and take part at headquarters as one agent, with the lines' summed sample count (docs/plants.md)",
);
export const INSPECT_USAGE = serviceUsage('inspect', 'classify new images with the latest global model and publish (and log) a verdict for each');

export const DEMO_USAGE = `fedline demo: a whole federation on this machine: embedded broker, aggregator and 3 agents
as separate processes on generated images

usage: fedline demo [options]
  --rounds N            rounds (12)
  --out DIR             working folder (./demo-out)
  --seed N              seed of the images and the model (42)
  --epochs N            local epochs per round (2)
  --size PX             image size (32)
  --scale X             images per class, times the default (1)
  --model M             small-cnn|vgg11|vgg16|vgg19 (small-cnn)
  --federate all|head   what the agents train and send (all)
  --width X             channel width factor (VGG: 0.25, else 1)
  --init-from DIR       start from this pretrained model
  --pretrain-epochs N   pretrain a VGG base first (VGG: 15)
  --learning-rate X     local learning rate
  --trigger always|opcua  opcua: agents train only in the idle windows of a simulated PLC (always)
  --plc-schedule SPEC   the simulated PLC's cycle, STATE:SECONDS,... (Running:6,Idle:9)
  --encoding f32|f16|q8 update encoding (f32)
  --delta               updates as differences to the base model
  --strategy NAME       the aggregator's strategy: scaffold, fedavg, fedprox, ... (scaffold; fedavg with --federate head)
  -h, --help            this text

${EXIT_CODES_TEXT}`;

export const PLC_SIM_USAGE = `fedline plc-sim: a simulated PLC (OPC UA server) whose line state alternates on a schedule

options:
  --port N              TCP port (4840; 0 picks a free one)
  --host ADDR           address to listen on (127.0.0.1)
  --lines N             lines Line1..LineN (1)
  --schedule SPEC       the cycle, STATE:SECONDS,...  (Running:20,Idle:10)
  --offset SECONDS      line N starts (N-1) * offset seconds later in the cycle (0)
  --pki DIR             server certificate store (./.fedline-plc-sim/pki)
  --user NAME:PASSWORD  require this login (repeatable); anonymous is then refused
  -h, --help            this text

variables: ns=1;s=Line<N>.State (String), ns=1;s=Line<N>.Idle (Boolean), ns=1;s=Line<N>.StateCode (Int32: 4 Idle, 6 Running)`;

export const PASSWD_USAGE = `fedline passwd: add or change a user in a broker password file (Mosquitto's format, $7$ PBKDF2-SHA512)

usage: fedline passwd --file FILE --user NAME [--password-file F] [--iterations N]
  The password is read from --password-file, or from the first line of standard input
  (printf '%s\\n' "$PW" | fedline passwd ...). The file is created (mode 0600) if needed.
  The same file works for the embedded broker (auth.passwordFile) and Mosquitto (password_file).
  -h, --help            this text`;

export const ACL_USAGE = `fedline acl: render an access file (roles per user) as a Mosquitto acl_file

usage: fedline acl --access ACCESS.json [--out FILE]
  Both brokers then enforce the same rules: the embedded broker reads ACCESS.json itself.
  -h, --help            this text`;

export const CLASSIFY_USAGE = `fedline classify: the predicted class and its confidence for each image

usage: fedline classify --model DIR [--json] [--backend ${backendPreferences.join('|')}] [--classes A,B,..] [--normalization MODE] IMAGE...
  -m, --model DIR       a model store version (e.g. <stateDir>/models/v12) or a tfjs layers model folder
  --json                one JSON document for machines
  --backend B           TensorFlow.js backend (auto)
  --classes A,B,..      class names, for a bare tfjs model
  --normalization MODE  input normalization, for a bare tfjs model
  -h, --help            this text
exit code 0 when every image was classified, 1 when some could not be read, 2 on bad usage`;

export const MODEL_INFO_USAGE = `fedline model-info: parameters and per-round update size of a model in both federation modes

usage: fedline model-info [--model vgg19] [--size 224] [--width 1] [--head 4096,4096|paper|default] [--dropout 0.5] [--classes 4] [--json]
  -h, --help            this text`;

export const PRETRAIN_USAGE = `fedline pretrain: a starting model from a folder of reference images, for model.initFrom

usage: fedline pretrain (--data DIR --classes A,B,... | --synth [--scale X] [--references SET]) --out DIR [--model small-cnn|vgg11|vgg16|vgg19]
                        [--size PX] [--width X] [--epochs N] [--batch N] [--learning-rate X] [--seed N] [--normalization MODE]
                        [--learning-rate-decay F] [--init he|seeded] [--batch-norm] [--augment] [--eval-each-epoch]
                        [--keep-best]

  --learning-rate-decay  per-epoch factor of the learning rate (epoch e, from 1, at
           X x F^(e-1); Adam's state kept across epochs); default 1, constant
  --init   the kernels before pretraining: he (He-normal, the default: a VGG-19 without batch
           normalisation trains from scratch) or seeded (Glorot, the federation's own seeded init)
  --augment  flips, lighting and small turns of the reference images while training (as the
           experiment's pretrained.augmentation, its default): features that carry to new products
  --eval-each-epoch  after every epoch, the held-out accuracy and how many images of each class
           were called that class (training itself unchanged): has the base split OKAY from
           NOT_OKAY yet (docs/experiment.md, "Why the base never learnt the reference defects")
  --keep-best  save the weights of the epoch with the best balanced accuracy on the held-out 20%
           (judged after every epoch), not the last epoch's; pretrain.json records the epoch,
           its figures and the last epoch's (the held-out split chose it: its figure is optimistic)
  --batch-norm  batch normalisation after every convolution (model.batchNorm: the experiment's
           model must then set it too)

  --synth  generate the reference images (other products, other defects, other objects; never the
           experiment's clients, their defects or its external product) in OUT-reference/ and
           train on them: the stand-in for ImageNet weights that \`fedline experiment\` reuses
  --scale X  with --synth: reference images per product and class, times the default (1: ten
           NOT_OKAY images per product and defect, too few to learn defects of a few pixels;
           docs/experiment.md, "Why the base never learnt the reference defects")
  --references SET  with --synth: classic (every port with the same light-brown contact tongue,
           the default) or varied-tongues (each image's tongue one of seven USB colours at a
           random tone; docs/experiment.md, "Reference products with varied contact tongues")
  -h, --help  this text`;

export const DATASET_USAGE = `fedline dataset synth: write generated USB-inspection images

usage: fedline dataset synth --out DIR [--seed N] [--size PX] [--scale X] [--parts clients,external,probes,reference]
                             [--references classic|varied-tongues]

  DIR/client1..3/<CLASS>/       each client's product and defect (an agent's data.dir)
  DIR/external/{OKAY,HIDDEN}/   a fourth product (USB 3.0), never trained on
  DIR/probes/<client>-<defect>/ a client's product with another client's defect (NOT_OKAY)
  DIR/reference/<CLASS>/        other products, defects and objects: for \`fedline pretrain\`
                                (--references varied-tongues: each port's contact tongue one of
                                seven colours; the other parts are the same either way)
  -h, --help                    this text`;

export const EXPERIMENT_USAGE = `fedline experiment: the seed paper's comparison

usage: fedline experiment --config FILE [--out DIR] [--mode in-process|mqtt] [--seeds S1,S2,..]

Runs the seed paper's comparison (centralized, local-only per site, federated full fine-tune,
federated head only, federated from a random init, and the config's "recipes": more federated
arms) on one set of splits and seeds, and writes report.md, results.json, learning-curve,
per-site and confusion-matrix PNGs under the config's "out" (or --out). report.md ranks the
federated models and checks the goals of issue 11.
With "seeds" in the config (or --seeds), the whole comparison runs once per seed in OUT/seed-<s>,
and OUT/report.md and OUT/results.json rank the federated models by their mean over the seeds.
Example: npx fedline experiment --config examples/experiment-paper.json
         npx fedline experiment --config examples/experiment-recipes.json --seeds 42
  --seeds LIST  comma-separated seeds, replacing the config's "seeds"
  -h, --help    this text`;

export const KEYGEN_USAGE = `fedline keygen: an Ed25519 key pair for signing global models

usage: fedline keygen --out DIR [--force]
  --out DIR   where model-signing.key (aggregator, secret) and model-signing.pub (agents) are written
  --force     replace an existing pair (agents then need the new public key)
  -h, --help  this text`;

/** Usage by command, for `fedline <command> --help` and usage errors. */
export const DASHBOARD_USAGE = `fedline dashboard: a web page that follows a federation live through the broker

usage: fedline dashboard --config FILE [--port N] [--host ADDR]

options:
  --config FILE   dashboard config (examples/dashboard.json): federation, mqtt login (role dashboard),
                  http.host / http.port, operators.passwordFile (operator logins; absent: read-only)
  --port N        serve on this port instead of http.port (0 picks a free one)
  --host ADDR     serve on this address instead of http.host (default 127.0.0.1, loopback only)
  -h, --help      this text

The page, its script and styles ship with fedline: no internet needed. See docs/dashboard.md.

${EXIT_CODES_TEXT}`;

export const MODELS_USAGE = `fedline models: every stored model version with its stage (candidate, validated, released,
rejected, rolled-back), the sites' metrics and its signature, read from the aggregator's state folder

usage: fedline models --state DIR [--json]
  --state DIR   the aggregator's stateDir (read only; safe while the aggregator runs)
  --json        one JSON document instead of a table
  -h, --help    this text

${EXIT_CODES_TEXT}`;

const releaseOptions = `  --url URL              the broker (mqtt://HOST:PORT or mqtts://)
  --federation NAME      the federation (topic root fl/NAME unless --topic-root)
  --topic-root ROOT      the federation's topic root, when not fl/NAME
  --username NAME        an MQTT login with the mes role (default mes)
  --password-file FILE   its password
  --ca-file FILE         CA certificate for mqtts://
  --by NAME              who asks (recorded in the registry and the events)
  --reason TEXT          why (recorded)
  --timeout-ms N         how long to wait for the aggregator's answer (30000)
  -h, --help             this text
Exit 0 when the aggregator accepted the command, 1 when it refused it or did not answer.`;

export const RELEASE_USAGE = `fedline release: release a model version to the production lines (the MES command over MQTT)

usage: fedline release VERSION --url URL --federation NAME [options]
${releaseOptions}

${EXIT_CODES_TEXT}`;

export const ROLLBACK_USAGE = `fedline rollback: go back to the version released before, or to VERSION (the MES command over MQTT)

usage: fedline rollback [VERSION] --url URL --federation NAME [options]
${releaseOptions}

${EXIT_CODES_TEXT}`;

export const COMMAND_USAGE: Readonly<Record<string, string>> = {
  dashboard: DASHBOARD_USAGE,
  models: MODELS_USAGE,
  release: RELEASE_USAGE,
  rollback: ROLLBACK_USAGE,
  demo: DEMO_USAGE,
  broker: BROKER_USAGE,
  aggregator: AGGREGATOR_USAGE,
  agent: AGENT_USAGE,
  plant: PLANT_USAGE,
  inspect: INSPECT_USAGE,
  'plc-sim': PLC_SIM_USAGE,
  passwd: PASSWD_USAGE,
  acl: ACL_USAGE,
  classify: CLASSIFY_USAGE,
  'model-info': MODEL_INFO_USAGE,
  pretrain: PRETRAIN_USAGE,
  dataset: DATASET_USAGE,
  experiment: EXPERIMENT_USAGE,
  keygen: KEYGEN_USAGE,
};

/** The options a usage text names (`--config`, `--port`...), for "valid options:" after a bad one. */
export function optionsIn(usage: string): string[] {
  return [...new Set([...usage.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0]))];
}
