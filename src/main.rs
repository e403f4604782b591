//! The `corekv` binary: parses the command line and hands off. `serve` runs a node; the other
//! subcommands are a script-friendly client (see `corekv::cli`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use corekv::cli::ClientCommand;
use corekv::config::{Config, ServeArgs};

#[derive(Parser, Debug)]
#[command(
    name = "corekv",
    version,
    about = "corekv: a thread-per-core key-value store",
    after_help = "Client commands exit 0 on success, 1 on not found or a failed condition, \
                  2 on errors (message on stderr). On a node with --requirepass or users, \
                  set COREKV_TOKEN=USER:PASSWORD (or the default user's PASSWORD) in the \
                  environment."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (Ctrl-C or SIGTERM drains and exits 0).
    Serve(Box<ServeArgs>),
    /// Run a local cluster on loopback (one process per node) and print its addresses;
    /// Ctrl-C stops every node.
    DevCluster(corekv::devcluster::DevClusterArgs),
    /// A cluster as a whole: `cluster status`, `add`, `remove`
    #[command(subcommand, after_help = corekv::cli::cluster::ENVIRONMENT_HELP)]
    Cluster(corekv::cli::cluster::ClusterCommand),
    /// Users and their permissions (through a node's HTTP API; needs an admin user)
    #[command(subcommand, after_help = corekv::cli::cluster::ENVIRONMENT_HELP)]
    User(corekv::cli::user::UserCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Client(command) => corekv::cli::run(command),
        Command::Cluster(command) => match corekv::cli::cluster::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corekv cluster: {e}");
                ExitCode::from(2)
            }
        },
        Command::User(command) => match corekv::cli::user::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corekv user: {e}");
                ExitCode::from(2)
            }
        },
        Command::DevCluster(args) => match corekv::devcluster::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("corekv dev-cluster: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    init_logging();
    let result = Config::load(args).map_err(Into::into).and_then(corekv::node::run);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    // glommio logs an ERROR when it probes io_uring polling on the first direct-I/O file of a
    // disk that does not support it (virtio, most cloud disks) and then carries on without it:
    // harmless, so its reactor is quiet unless RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,glommio::reactor=off"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
