//! tandem: the command-line tool. Later issues add `perf`, `store` and replication commands;
//! today it reports the version and checks core masks the way tandemd reads them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tandem::reactor::CoreMask;

#[derive(Parser, Debug)]
#[command(name = "tandem", version = tandem::VERSION, about = "The Tandem command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the engine version.
    Version,
    /// Print the cores a mask selects, and whether this machine has them.
    Cores {
        /// 0x3, [0,1], 0-1
        mask: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Version => {
            println!("tandem {}", tandem::VERSION);
            ExitCode::SUCCESS
        }
        Command::Cores { mask } => {
            match CoreMask::parse(&mask).and_then(|m| m.check_present().map(|()| m)) {
                Ok(m) => {
                    println!("{m}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tandem: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
