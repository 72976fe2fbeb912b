// Content-Security-Policy checks shared by the e2e scripts: a page must carry windi's policy
// and work under it, so a policy too strict for the page (or code the policy forbids, such as
// an inline handler or a relay URL it does not name) fails the run instead of breaking quietly.
//
// A violation is seen twice over: a `securitypolicyviolation` listener installed before any
// of the page's own scripts, which reports through a Playwright binding, and Chromium's console
// message ("… violates the following Content Security Policy directive …").

const BINDING = '__windiCspViolation';

/** Collects the violations of every page of the contexts (or pages) it watches. */
export function cspWatch() {
  // A relay URL carries the access token in its query: keep it out of the logs.
  const redact = (text) => text.replace(/token=[^&'"\s]+/g, 'token=…');
  const violations = [];
  return {
    violations,

    /** Watches a browser context or a page; `who` names it in the report. */
    async watch(target, who) {
      await target.exposeBinding(BINDING, (_source, violation) => {
        violations.push(redact(`${who}: ${violation}`));
      });
      await target.addInitScript((binding) => {
        document.addEventListener('securitypolicyviolation', (event) => {
          const where = event.sourceFile ? ` at ${event.sourceFile}:${event.lineNumber}` : '';
          const sample = event.sample ? ` (${event.sample})` : '';
          window[binding]?.(`${event.effectiveDirective} blocked ${event.blockedURI || 'inline'}`
            + `${where}${sample} on ${document.location.href}`);
        }, true);
      }, BINDING);
      target.on('console', (message) => {
        if (/Content Security Policy/i.test(message.text())) {
          violations.push(redact(`${who} console: ${message.text()}`));
        }
      });
    },

    /** Throws naming every violation seen so far. */
    assertNone() {
      if (violations.length > 0) {
        throw new Error(`Content-Security-Policy violations:\n  ${[...new Set(violations)].join('\n  ')}`);
      }
    },

    /** `error` with the violations seen so far, which are often its cause (a blocked relay
     * connection shows up as a wait that timed out). */
    explain(error) {
      if (violations.length === 0) return error;
      return new Error(`${error.message}\nContent-Security-Policy violations:\n  `
        + [...new Set(violations)].join('\n  '));
    },
  };
}

/** Fails unless the navigation's answer carries a Content-Security-Policy that forbids inline
 * script: without it the run would prove nothing about the policy. Answers the policy. */
export async function requirePolicy(response, what) {
  if (!response) throw new Error(`${what}: no answer to the navigation`);
  const policy = await response.headerValue('content-security-policy');
  if (!policy) throw new Error(`${what} came without a Content-Security-Policy header`);
  const script = policy.split(';').map((d) => d.trim()).find((d) => d.startsWith('script-src'))
    ?? policy.split(';').map((d) => d.trim()).find((d) => d.startsWith('default-src'));
  if (!script || script.includes("'unsafe-inline'") || script.includes("'unsafe-eval'")) {
    throw new Error(`${what}: the policy allows inline script or eval: ${policy}`);
  }
  return policy;
}
