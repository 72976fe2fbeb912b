//! The `message` function: a Lambda handler under the Lambda runtime, a local server on `PORT`
//! otherwise.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    windi_shared::http::runtime::run_function("windi-message", windi_message::routes()).await
}
