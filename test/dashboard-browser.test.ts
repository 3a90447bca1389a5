import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { accessFileSchema } from '../broker/access.js';
import { startBroker } from '../broker/main.js';
import { hashPassword } from '../broker/passwords.js';
import { dashboardConfigSchema } from '../dashboard/dashboard-config.js';
import { startDashboard } from '../dashboard/main.js';
import { parseConfig } from '../shared/config/config-file.js';
import { brokerConfigSchema } from '../shared/config/broker-config.js';
import { silentLogger } from '../shared/util/logger.js';
import { startFederation, tempDir, testAccess, testPassword, waitFor, writeAuthFiles } from './helpers.js';
import { mesObserver } from './mes-observer.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const skip = existsSync(CHROMIUM) ? false : `no ${CHROMIUM}: install Debian's chromium package (.ci/run does) to run the browser test`;

const points = (page: Page, chart: string) => page.locator(`#${chart} circle.point`).count();

test(
  'dashboard in headless Chromium during a real federation: agents listed, rounds and chart points appear live, an operator pauses and resumes the federation',
  { skip, timeout: 300_000 },
  async () => {
    const dir = tempDir('dashboard-browser');
    const shots = mkdtempSync(join(tmpdir(), 'fedline-dashboard-screens-'));
    const agents = ['site-a', 'site-b'];
    const base = testAccess(agents);
    const access = accessFileSchema.parse({ ...base, users: [...base.users, { username: 'dashboard', role: 'dashboard', operator: true }] });
    const auth = writeAuthFiles(dir.path, access);
    const broker = await startBroker(
      parseConfig(brokerConfigSchema, { host: '127.0.0.1', port: 0, auth: { passwordFile: auth.passwordFile, accessFile: auth.accessFile } }, 'test broker'),
      silentLogger(),
    );
    const operators = join(dir.path, 'operators.passwd');
    writeFileSync(operators, `shift-lead:${hashPassword('op-secret', 1000)}\n`);
    const dashboard = await startDashboard(
      parseConfig(
        dashboardConfigSchema,
        { federation: 'test', mqtt: { url: broker.url, ...auth.credentials('dashboard') }, http: { port: 0 }, operators: { passwordFile: operators } },
        'test dashboard',
      ),
      silentLogger(),
    );
    const mes = await mesObserver(broker.url, auth.credentials('auditor'));
    let browser: Browser | null = null;
    let federation: Awaited<ReturnType<typeof startFederation>> | null = null;
    const shot = async (page: Page, name: string) => {
      const path = join(shots, `${name}.png`);
      await page.screenshot({ path, fullPage: true });
      console.log(`screenshot: ${path}`);
    };
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      const pageErrors: string[] = [];
      page.on('pageerror', (e) => pageErrors.push(e.message));
      await page.goto(dashboard.url);
      await page.locator('#conn.up').waitFor({ timeout: 30_000 });

      federation = await startFederation({
        url: broker.url,
        dir: dir.path,
        agents,
        rounds: 40,
        auth: (u) => ({ username: u, password: testPassword(u) }),
        aggregator: { evaluateFinalModel: false },
      });
      const run = federation.aggregator.aggregator.run();
      run.catch(() => undefined); // ends (with an error) when the test closes the aggregator

      // 1. The agents appear with their state and backend, from their retained status.
      for (const a of agents) await page.locator(`#agents tr[data-agent="${a}"]`).waitFor({ timeout: 60_000 });
      await waitFor(
        'both agents show their backend',
        async () => (await page.locator('#agents tbody td:nth-child(5)', { hasText: /^cpu$/ }).count()) === 2,
        60_000,
      );
      await shot(page, '1-agents');

      // 2. Rounds complete: the timeline gains rows, each chart gains a point per site and model version.
      await page.locator('#rounds tr[data-round="1"] .pill.complete').waitFor({ timeout: 120_000 });
      await waitFor('the first chart points', async () => (await points(page, 'chart-accuracy')) >= 2, 60_000);
      const before = await points(page, 'chart-accuracy');
      assert.equal(await page.locator('#rounds tr[data-round="1"] .chip.trained').count(), 2, 'both sites trained in round 1');
      await waitFor('more chart points', async () => (await points(page, 'chart-accuracy')) > before, 120_000);
      assert.ok((await points(page, 'chart-accuracy')) > before, 'the accuracy chart gained points as rounds completed');
      assert.ok((await points(page, 'chart-recall')) > 0, 'the defect-recall chart has points');
      assert.ok((await page.locator('#models tr[data-version]').count()) >= 2, 'the models table lists the versions');
      await shot(page, '2-rounds');

      // 3. An operator logs in and pauses: the command goes over MQTT and the aggregator pauses the federation.
      assert.equal(await page.locator('#actions').isHidden(), true, 'no actions before login');
      await page.fill('#login-user', 'shift-lead');
      await page.fill('#login-password', 'op-secret');
      await page.click('#login-form button[type=submit]');
      await page.locator('#actions').waitFor({ state: 'visible', timeout: 30_000 });
      await page.fill('#reason', 'audit on line 2');
      await page.click('#actions button[data-verb="pause"]');
      await waitFor('the aggregator paused the federation', () =>
        mes.ofType('command-result').some((e) => e.verb === 'pause' && e.by === 'aggregator' && e.federationState === 'paused' && e.status === 'accepted'),
      );
      const pauseCommand = mes.ofType('command-result').find((e) => e.verb === 'pause' && e.by === 'aggregator')!;
      assert.match(String(pauseCommand.requestId), /^dashboard-/, 'the dashboard sent it, with its request id');
      await page.locator('#fed-state.paused').waitFor({ timeout: 30_000 });
      await page.locator('#commands li', { hasText: 'pause accepted by aggregator' }).waitFor({ timeout: 30_000 });
      // No new round starts while paused: the open round closes, then nothing is announced.
      const startedAtPause = mes.ofType('round-started').length;
      await waitFor('the open round closed', () => mes.ofType('round-completed').length >= startedAtPause, 120_000);
      const roundsWhilePaused = mes.ofType('round-started').length;
      assert.equal(roundsWhilePaused, startedAtPause, 'no round started while paused');
      await shot(page, '3-paused');

      // 4. Resume: rounds start again.
      await page.click('#actions button[data-verb="resume"]');
      await waitFor('a new round after resume', () => mes.ofType('round-started').length > roundsWhilePaused, 120_000);
      await page.locator('#fed-state.running').waitFor({ timeout: 30_000 });
      await shot(page, '4-resumed');
      assert.deepEqual(pageErrors, [], 'no script errors on the page');
      assert.deepEqual(mes.invalid, [], 'every event matches its documented schema');
    } catch (err) {
      const page = browser?.contexts()[0]?.pages()[0];
      if (page) await shot(page, 'failure').catch(() => undefined);
      throw err;
    } finally {
      await browser?.close().catch(() => undefined);
      await federation?.stop();
      await dashboard.close();
      await mes.close();
      await broker.close();
      dir.cleanup();
      console.log(`screenshots in ${shots}`);
    }
  },
);
