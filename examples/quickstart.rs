//! The quick start: the echo app and Gatehouse in one command, with `config/gatehouse.toml`.
//!
//! ```text
//! cargo run --example quickstart
//! curl -s http://127.0.0.1:4180/healthz          # public route: the app's echo
//! curl -si http://127.0.0.1:4180/private         # protected: 401 without a session
//! curl -s http://127.0.0.1:9090/metrics | grep gatehouse_
//! ```
//! Pass another config path as the first argument to try it instead.

use std::process::ExitCode;

#[path = "echo_upstream.rs"]
mod echo;

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/gatehouse.toml".to_string());
    let config = match gatehouse::config::load(path.as_ref()) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{path}:\n{errors}");
            return ExitCode::from(2);
        }
    };
    gatehouse::logging::init(&config.log);

    // The echo app stands in for the first upstream of the config.
    let Some(app) = config.upstreams.first().map(|u| u.address) else {
        eprintln!("{path} has no upstream");
        return ExitCode::from(2);
    };
    let echo_thread = std::thread::spawn(move || -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(app).await?;
            echo::serve(listener).await
        })
    });

    match gatehouse::server::prepare(&config) {
        Ok(prepared) => {
            let proxy = prepared.addresses.proxy[0];
            println!();
            println!("  Gatehouse is running in front of the echo app ({app}).");
            println!(
                "  Open http://{proxy}/healthz  (a public route: the app shows the headers it got)"
            );
            println!(
                "  Open http://{proxy}/anything (protected: sends a browser to /oauth2/start)"
            );
            println!("  Metrics: http://{}/metrics", prepared.addresses.admin);
            println!("  Stop with Ctrl-C.");
            println!();
            if echo_thread.is_finished() {
                eprintln!("the echo app could not start on {app} (is the port taken?)");
                return ExitCode::from(1);
            }
            prepared.run_until_signal();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::from(1)
        }
    }
}
