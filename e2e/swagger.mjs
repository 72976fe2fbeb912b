// Swagger UI in a real headless Chromium: the Authorize button logs in with the OAuth2
// password flow against /auth/login, and an authorized call to GET /auth/me answers 200.
// All of it under the Content-Security-Policy windi sends for /docs: any violation fails the
// run (e2e/csp.mjs).
//
//   node e2e/swagger.mjs BASE_URL EMAIL PASSWORD
//
// The browser is Debian's /usr/bin/chromium (CHROMIUM_PATH overrides it). Every wait is on a
// condition with a timeout. Exit code 0 means it held.

import { chromium } from 'playwright-core';
import { cspWatch, requirePolicy } from './csp.mjs';

const [base, email, password] = process.argv.slice(2);
if (!base || !email || !password) {
  console.error('usage: node e2e/swagger.mjs BASE_URL EMAIL PASSWORD');
  process.exit(2);
}
const WAIT_MS = Number(process.env.E2E_WAIT_MS ?? 20000);
const deadline = setTimeout(() => {
  console.error('FAILED: took longer than 60 s');
  process.exit(1);
}, 60000);
deadline.unref();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const csp = cspWatch();
try {
  const page = await browser.newPage();
  await csp.watch(page, 'docs');
  page.setDefaultTimeout(WAIT_MS);
  // Only the page's own origin may be contacted: the UI's assets are in the binary.
  const foreign = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(base)) foreign.push(request.url());
  });
  await requirePolicy(await page.goto(`${base.replace(/\/$/, '')}/docs/`), 'the docs page');

  await page.getByRole('button', { name: 'Authorize' }).first().click();
  await page.locator('#oauth_username').fill(email);
  await page.locator('#oauth_password').fill(password);
  await page.locator('.auth-btn-wrapper button.authorize').click();
  // Swagger shows "Logout" once the token endpoint answered with a token.
  await page.getByText('Logout', { exact: true }).first().waitFor();
  await page.locator('.btn-done').click();
  console.log('authorized through the OAuth2 password flow');

  const me = page.locator('#operations-auth-me');
  await me.locator('.opblock-summary').click();
  await me.getByRole('button', { name: 'Try it out' }).click();
  await me.getByRole('button', { name: 'Execute' }).click();
  const status = me.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor();
  const code = (await status.textContent()).trim();
  const body = await me.locator('.live-responses-table tbody .microlight').first().textContent();
  console.log(`GET /auth/me answered ${code}: ${body.replace(/\s+/g, ' ').slice(0, 120)}`);
  if (!code.startsWith('200') || !body.includes(email)) {
    throw new Error(`expected 200 with ${email}, got ${code}: ${body}`);
  }
  if (foreign.length > 0) {
    throw new Error(`the docs page fetched from elsewhere: ${foreign.join(', ')}`);
  }
  csp.assertNone();
  console.log('no Content-Security-Policy violation');
} catch (error) {
  throw csp.explain(error);
} finally {
  await browser.close();
}
