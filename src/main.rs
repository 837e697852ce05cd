//! The `gatehouse` command: parse the CLI, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An authentication sidecar for apps with no login of their own"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and the admin listener.
    Serve {
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "config/gatehouse.toml"
        )]
        config: PathBuf,
    },
    /// Check a config file: print every problem with its key path (exit 2), or "ok".
    CheckConfig {
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "config/gatehouse.toml"
        )]
        config: PathBuf,
    },
}

/// Exit code for a config with problems.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure to start (a port taken, a bad certificate).
const EXIT_START: u8 = 1;

fn load(path: &std::path::Path) -> Result<gatehouse::config::Config, ExitCode> {
    gatehouse::config::load(path).map_err(|errors| {
        eprintln!("{}: {} problem(s):", path.display(), errors.0.len());
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            gatehouse::logging::init(&config.log);
            match gatehouse::server::prepare(&config) {
                Ok(prepared) => {
                    for addr in &prepared.addresses.proxy {
                        tracing::info!("proxy listening on http://{addr}");
                    }
                    for addr in &prepared.addresses.tls {
                        tracing::info!("proxy listening on https://{addr}");
                    }
                    tracing::info!("admin listening on http://{}", prepared.addresses.admin);
                    prepared.run_until_signal();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("gatehouse: {e}");
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
}
