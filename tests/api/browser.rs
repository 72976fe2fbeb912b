//! The browser client in a real browser: `e2e/chat.mjs` drives headless Chromium through
//! Playwright against a windi and relay started here, two users chatting live (see the script
//! for the steps). Screenshots land in `target/e2e-screenshots/`. Both scripts run under the
//! Content-Security-Policy windi sends and fail on any violation of it (`e2e/csp.mjs`).
//!
//! It needs Node.js (20 or newer, with npm) and Debian's `chromium` (or `CHROMIUM_PATH`); when
//! either is missing the test fails and says what to install. `.ci/run` installs both.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use windi_tests::TestApp;

/// The script's own budget is 150 s; this is the backstop if node itself hangs.
const E2E_TIMEOUT: Duration = Duration::from_secs(200);
/// What both scripts print once the page has run under windi's policy without a violation.
const NO_VIOLATION: &str = "no Content-Security-Policy violation";
/// `npm ci` of one package, from the registry or the local cache.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

/// Node, Chromium and `e2e/node_modules`, checked (and installed where it can be) once per run.
fn browser_prerequisites() -> (PathBuf, String) {
    static READY: Mutex<bool> = Mutex::new(false);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let e2e = root.join("e2e");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return (root, chromium);
    }
    require_node();
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is not at {chromium}: install Debian's `chromium` package \
         (apt-get install chromium), or point CHROMIUM_PATH at a Chromium binary"
    );
    if !e2e.join("node_modules/playwright-core").is_dir() {
        let log = root.join("target/e2e-npm-ci.log");
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&e2e);
        let (ok, output) = windi_tests::block_on_aside(run(npm, &log, NPM_CI_TIMEOUT));
        assert!(
            ok,
            "`npm ci --prefix e2e` failed (it installs playwright-core from the npm \
             registry):\n{output}"
        );
    }
    *ready = true;
    (root, chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_live_in_a_real_browser() {
    let (root, chromium) = browser_prerequisites();
    let e2e = root.join("e2e");
    let (app, relay) = TestApp::spawn_for_browser().await;
    let shots = root.join("target/e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = Command::new("node");
    node.arg(e2e.join("chat.mjs"))
        .arg(&app.base)
        .arg(&shots)
        .env("CHROMIUM_PATH", &chromium);
    let (ok, output) = run(node, &shots.join("e2e.log"), E2E_TIMEOUT).await;
    assert!(
        ok,
        "the browser test failed (screenshots of the moment in {}):\n{output}",
        shots.display()
    );
    assert!(output.contains(NO_VIOLATION), "{output}");
    println!("{output}");
    relay.stop().await;
}

/// Swagger UI's Authorize button logs in (OAuth2 password flow) and an authorized call works,
/// in a real browser, with every asset served by windi itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_authorizes_and_calls_a_route_in_a_real_browser() {
    let (root, chromium) = browser_prerequisites();
    let app = TestApp::spawn().await;
    let user = app.user("Swagger").await;
    let log = root.join("target/e2e-screenshots/swagger.log");
    let mut node = Command::new("node");
    node.arg(root.join("e2e/swagger.mjs"))
        .arg(&app.base)
        .arg(&user.email)
        .arg(windi_tests::PASSWORD)
        .env("CHROMIUM_PATH", &chromium);
    let (ok, output) = run(node, &log, E2E_TIMEOUT).await;
    assert!(ok, "the Swagger UI test failed:\n{output}");
    assert!(output.contains("answered 200"), "{output}");
    assert!(output.contains(NO_VIOLATION), "{output}");
}

/// Fails with what to install unless `node` 20 or newer runs.
fn require_node() {
    let install = "install Node.js 20 or newer with npm (Debian: apt-get install nodejs npm, \
                   if its version is recent enough)";
    let output = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {install}"));
    let version = String::from_utf8_lossy(&output.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or(0);
    assert!(major >= 20, "node is {}: {install}", version.trim());
}

/// Runs `command` with its output (stdout and stderr, interleaved) going to `log`, and waits
/// for it up to `timeout`, killing it then. Answers whether it succeeded, and its output.
async fn run(mut command: Command, log: &Path, timeout: Duration) -> (bool, String) {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let file = File::create(log).unwrap();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let deadline = tokio::time::Instant::now() + timeout;
    let ok = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.success();
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = std::fs::read_to_string(log).unwrap_or_default();
            return (false, format!("{output}\n(killed after {timeout:?})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (ok, std::fs::read_to_string(log).unwrap_or_default())
}
