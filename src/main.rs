//! The `gatehouse` command: parse the CLI, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::users::ops::{OpError, UserOp};
use gatehouse::users::render::{render, Format};

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
    /// Without `--connect` it makes no network call and touches no file but the config.
    CheckConfig {
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "config/gatehouse.toml"
        )]
        config: PathBuf,
        /// Also fetch each issuer's discovery document and JWKS, and open and write the
        /// store; report each result (exit 1 when one fails).
        #[arg(long)]
        connect: bool,
    },
    /// Manage local accounts: on the store file, or through a running server's admin API.
    Users {
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "config/gatehouse.toml",
            global = true
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// The store itself: migrate the PostgreSQL schema, copy the embedded file into PostgreSQL.
    Store {
        #[arg(
            long,
            short,
            env = "GATEHOUSE_CONFIG",
            default_value = "config/gatehouse.toml",
            global = true
        )]
        config: PathBuf,
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Apply the embedded migrations to the configured PostgreSQL database (also when
    /// store.auto_migrate = false); print the schema version before and after.
    Migrate,
    /// Copy an embedded store (redb) into an empty PostgreSQL database, migrated first;
    /// compare and print the row counts of both sides. The server must be stopped.
    Copy {
        /// The data directory holding gatehouse.redb, or the store file itself.
        #[arg(long = "from-redb", value_name = "PATH")]
        from_redb: PathBuf,
        /// The target database: postgres://USER@HOST:PORT/DATABASE (it must be empty).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Every account: id, username, email, roles, status, last login.
    List {
        #[arg(long)]
        json: bool,
        /// With --json: the stored records, internal fields included.
        #[arg(long)]
        raw: bool,
    },
    /// One account, by id, email or username.
    Show {
        user: String,
        #[arg(long)]
        json: bool,
        /// With --json: the stored record, internal fields included.
        #[arg(long)]
        raw: bool,
    },
    /// Create a local account (to be linked by email at its first login).
    Add {
        username: String,
        #[arg(long)]
        email: Option<String>,
    },
    /// Disable an account and end its sessions.
    Disable { user: String },
    /// Enable an account again.
    Enable { user: String },
    /// Delete an account, its links and its sessions.
    Delete { user: String },
    /// Local roles: `roles add ID ROLE`, `roles remove ID ROLE`.
    Roles {
        #[command(subcommand)]
        change: RoleChange,
    },
    /// Local attributes: `attrs set ID NAME VALUE`, `attrs unset ID NAME`.
    Attrs {
        #[command(subcommand)]
        change: AttrChange,
    },
    /// The second factor: `mfa status ID`, `mfa reset ID`.
    Mfa {
        #[command(subcommand)]
        change: MfaCommand,
    },
    /// Every account, as JSON or CSV.
    Export {
        #[arg(long, value_parser = ["json", "csv"], default_value = "json")]
        format: String,
        /// With JSON: the stored records, internal fields included.
        #[arg(long)]
        raw: bool,
    },
    /// The audit log, of one account or all.
    Audit {
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete accounts not signed in for `--inactive` (e.g. 90d).
    Prune {
        #[arg(long)]
        inactive: String,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// With --json: the stored records, internal fields included.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand)]
enum MfaCommand {
    /// Enrolled or not, recovery codes left, locked (audited).
    Status {
        user: String,
        #[arg(long)]
        json: bool,
        /// With --json: the stored record, internal fields included.
        #[arg(long)]
        raw: bool,
    },
    /// Remove the TOTP factor: the user enrols again at the next login (audited).
    Reset { user: String },
}

#[derive(Subcommand)]
enum RoleChange {
    Add { user: String, role: String },
    Remove { user: String, role: String },
}

#[derive(Subcommand)]
enum AttrChange {
    Set {
        user: String,
        name: String,
        value: String,
    },
    Unset {
        user: String,
        name: String,
    },
}

/// The operation and how to print its answer.
fn user_op(command: UsersCommand) -> Result<(UserOp, Format), String> {
    // `--raw` means JSON: the stored record, internal fields included.
    let as_format = |json: bool, raw: bool| match (json, raw) {
        (_, true) => Format::RawJson,
        (true, false) => Format::Json,
        (false, false) => Format::Table,
    };
    Ok(match command {
        UsersCommand::List { json, raw } => (UserOp::List, as_format(json, raw)),
        UsersCommand::Show { user, json, raw } => (UserOp::Show { user }, as_format(json, raw)),
        UsersCommand::Add { username, email } => (UserOp::Add { username, email }, Format::Table),
        UsersCommand::Disable { user } => (UserOp::Disable { user }, Format::Table),
        UsersCommand::Enable { user } => (UserOp::Enable { user }, Format::Table),
        UsersCommand::Delete { user } => (UserOp::Delete { user }, Format::Table),
        UsersCommand::Roles { change } => match change {
            RoleChange::Add { user, role } => (UserOp::RoleAdd { user, role }, Format::Table),
            RoleChange::Remove { user, role } => (UserOp::RoleRemove { user, role }, Format::Table),
        },
        UsersCommand::Attrs { change } => match change {
            AttrChange::Set { user, name, value } => {
                (UserOp::AttrSet { user, name, value }, Format::Table)
            }
            AttrChange::Unset { user, name } => (UserOp::AttrUnset { user, name }, Format::Table),
        },
        UsersCommand::Mfa { change } => match change {
            MfaCommand::Status { user, json, raw } => {
                (UserOp::MfaStatus { user }, as_format(json, raw))
            }
            MfaCommand::Reset { user } => (UserOp::MfaReset { user }, Format::Table),
        },
        UsersCommand::Export { format, raw } => (
            UserOp::Export,
            if format == "csv" {
                Format::Csv
            } else {
                as_format(true, raw)
            },
        ),
        UsersCommand::Audit { user, json } => (UserOp::Audit { user }, as_format(json, false)),
        UsersCommand::Prune {
            inactive,
            dry_run,
            json,
            raw,
        } => {
            let inactive = gatehouse::config::duration::parse_duration(&inactive)
                .map_err(|e| format!("--inactive: {e}"))?;
            (
                UserOp::Prune {
                    inactive_secs: inactive.as_secs(),
                    dry_run,
                },
                as_format(json, raw),
            )
        }
    })
}

/// Exit code when the account named does not exist.
const EXIT_NOT_FOUND: u8 = 3;

fn users(config: PathBuf, command: UsersCommand) -> ExitCode {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (op, format) = match user_op(command) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("gatehouse users: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match gatehouse::users::cli::run(&config, &op) {
        Ok(output) => {
            print!("{}", render(&output, format));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse users: {e}");
            ExitCode::from(match e {
                OpError::NotFound(_) => EXIT_NOT_FOUND,
                _ => EXIT_START,
            })
        }
    }
}

fn store(config: PathBuf, command: StoreCommand) -> ExitCode {
    use gatehouse::store::postgres::{PgOptions, PgStore};
    match command {
        StoreCommand::Migrate => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let gatehouse::config::model::StoreBackend::Postgres(pg) = &config.store_backend else {
                println!(
                    "store.backend = \"redb\": the embedded store has no schema to migrate; nothing to migrate"
                );
                return ExitCode::SUCCESS;
            };
            let options = PgOptions::configured(pg);
            match PgStore::migrate_explicitly(&options) {
                Ok(done) => {
                    let shown = gatehouse::store::postgres::masked(&options.url);
                    if done.before == done.after {
                        println!(
                            "{shown}: schema version {} (up to date; nothing to migrate)",
                            done.after
                        );
                    } else {
                        println!(
                            "{shown}: schema version {} -> {} (migrated)",
                            done.before, done.after
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse store migrate: {e}");
                    ExitCode::from(EXIT_START)
                }
            }
        }
        StoreCommand::Copy { from_redb, to } => {
            let problems = gatehouse::config::postgres_url::problems(&to);
            if !problems.is_empty() {
                for problem in problems {
                    eprintln!("gatehouse store copy: --to: {problem}");
                }
                return ExitCode::from(EXIT_CONFIG);
            }
            let options = PgOptions {
                url: to,
                pool_size: 2,
                auto_migrate: true,
                acquire_timeout: std::time::Duration::from_secs(10),
                offline_grace: std::time::Duration::from_secs(30),
            };
            match gatehouse::store::copy::redb_to_postgres(&from_redb, &options) {
                Ok(copied) => {
                    println!(
                        "copied {} -> {} (schema version {} -> {})",
                        copied.from.display(),
                        copied.to,
                        copied.migrated.before,
                        copied.migrated.after
                    );
                    println!("{:<16} {:>10} {:>10}", "table", "source", "copy");
                    for ((name, source), (_, copy)) in
                        copied.source.tables().into_iter().zip(copied.copy.tables())
                    {
                        println!("{name:<16} {source:>10} {copy:>10}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse store copy: {e}");
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
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

/// [`load`], then the checks for mistakes that would fail open
/// ([`gatehouse::config::lint`]): errors stop here (exit 2); warnings are returned, with the
/// MFA conflict warnings, for the caller to print.
fn load_checked(
    path: &std::path::Path,
) -> Result<(gatehouse::config::Config, Vec<String>), ExitCode> {
    let config = load(path)?;
    let findings = gatehouse::config::lint::lint(&config);
    if !findings.errors.is_empty() {
        eprintln!("{}: {} problem(s):", path.display(), findings.errors.len());
        for e in &findings.errors {
            eprintln!("  {e}");
        }
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let mut warnings = gatehouse::mfa::policy::warnings(&config);
    warnings.extend(findings.warnings);
    Ok((config, warnings))
}

/// `check-config --connect`: each connection's discovery document and JWKS, then the store
/// (a file written in the data dir, then the store opened and a write committed). Prints one
/// line per check on stdout (`ok` or `FAILED`, with what was found); returns how many failed.
fn connect_checks(config: &gatehouse::config::Config) -> usize {
    let mut failed = 0;
    let mut report = |what: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("ok      {what}: {detail}"),
        Err(e) => {
            failed += 1;
            println!("FAILED  {what}: {}", gatehouse::text::Escaped(&e));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            report("network checks", Err(format!("no async runtime: {e}")));
            return failed;
        }
    };
    for (i, connection) in config.connections.iter().enumerate() {
        let name = format!("connections[{i}] ({})", connection.id);
        let provider = match gatehouse::auth::oidc::Provider::new(
            connection.clone(),
            gatehouse::clock::Clock::system(),
        ) {
            Ok(provider) => provider,
            Err(e) => {
                report(&name, Err(e));
                continue;
            }
        };
        for (step, result) in runtime.block_on(provider.check()) {
            report(&format!("{name} {}", step.as_str()), result);
        }
    }
    if config.connections.is_empty() {
        report(
            "store",
            Ok("not used (no connections: deny_all)".to_string()),
        );
        return failed;
    }
    let dir = &config.data_dir;
    let probe = dir.join(format!(".check-config-{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"gatehouse check-config\n"))
        .and_then(|()| std::fs::remove_file(&probe));
    let user = gatehouse::store::process_user();
    report(
        "store.data_dir",
        written
            .map(|()| format!("{} is writable by {user}", dir.display()))
            .map_err(|e| {
                format!(
                    "cannot write in {}: {e} (store.data_dir: {user} needs write access)",
                    dir.display()
                )
            }),
    );
    let store = match gatehouse::store::Store::open_configured(config) {
        Ok(store) => store
            .write(|_| Ok(()))
            .map(|()| format!("{} opened and a write committed", store.location()))
            .map_err(|e| e.to_string()),
        Err(gatehouse::store::StoreError::Locked(path)) => Ok(format!(
            "{} is open in a running gatehouse (not checked further)",
            path.display()
        )),
        Err(e) => Err(e.to_string()),
    };
    report("store", store);
    failed
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config, connect } => match load_checked(&config) {
            Ok((config, warnings)) => {
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                if connect {
                    let failed = connect_checks(&config);
                    if failed > 0 {
                        eprintln!("gatehouse check-config: {failed} check(s) failed");
                        return ExitCode::from(EXIT_START);
                    }
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Users { config, command } => users(config, command),
        Command::Store { config, command } => store(config, command),
        Command::Serve { config: path } => {
            let (config, warnings) = match load_checked(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            gatehouse::logging::init(&config.log);
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            match gatehouse::server::prepare_from_file(&config, &path) {
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
                    // Once: the log goes to stderr too, unless its level hides errors.
                    if tracing::enabled!(tracing::Level::ERROR) {
                        tracing::error!("{e}");
                    } else {
                        eprintln!("gatehouse: {e}");
                    }
                    ExitCode::from(EXIT_START)
                }
            }
        }
    }
}
