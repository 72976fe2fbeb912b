//! The `read` function: a Lambda handler under the Lambda runtime, a local server on `PORT`
//! otherwise.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    windi_shared::http::runtime::run_function("windi-read", windi_read::routes()).await
}
